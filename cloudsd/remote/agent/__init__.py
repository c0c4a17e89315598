"""cloudsd's agent on the machine: index, receive, verify, send and fetch model and output files.

Stdlib-only python3 (3.8+), with relative imports only: cloudsd zips this package into one file,
agent-<sha256 prefix>.pyz (`cloudsd.sync.agent.build_agent`), uploads it once into the state folder on the
machine (a changed agent gets a new name, so it is uploaded again), and runs it with one `exec` per job:

    python3 -I agent-<hash>.pyz serve   JSON requests on stdin, one per line; JSON replies and events out
    python3 -I agent-<hash>.pyz recv    frames in (a JSON header line, then its bytes); JSON acks out
    python3 -I agent-<hash>.pyz send    one JSON request line in; frames out (header, bytes, JSON trailer)

Files are written as hidden `.NAME.partial` files beside their final place and renamed in only once their
sha256 matches. Digests are cached in <state folder>/index.json, keyed by path, size and mtime_ns, so an
unchanged file is never hashed twice. Tokens arrive on stdin, never on a command line, and go only to the
origin they belong to.
"""
