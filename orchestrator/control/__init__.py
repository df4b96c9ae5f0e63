"""Control-plane services: pure of HTTP; they call the store."""
