"""Turn-taking: floor fusion features, the floor state machine, (later) speculation."""
