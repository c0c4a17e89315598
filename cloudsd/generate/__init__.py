"""`cloudsd generate`: what to make (request), how each web UI is asked for it (payloads, workflow graphs),
and the small HTTP client that talks to the UI through the SSH tunnel. Pure functions except `client`."""
