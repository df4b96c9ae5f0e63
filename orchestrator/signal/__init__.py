"""Signal processing for the floor model: Smart Turn log-mel features and end-of-phrase prosody."""
