"""Speech-side conversation logic that needs no I/O: streaming transcripts of the user's turn."""
