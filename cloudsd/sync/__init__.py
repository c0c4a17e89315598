"""Models up, outputs down: verified, resumable, fast.

- `models.push_models`: local files pushed over SSH, Civitai / Hugging Face / URL files fetched by the
  machine itself, each verified by sha256 and renamed into the web UI's folder only then.
- `outputs.pull_outputs`: new and changed images pulled home, verified, never overwriting a local file.
- `plan`: the pure decisions (what to send, skip, resume or rename), unit-tested without SSH.
- `agent`, `transfer`: the agent on the machine (cloudsd/remote/agent) and the streams that move bytes.

Nothing here imports click or rich; the CLI draws progress through the `Progress` protocol.
"""
