"""Code that runs on the machine: stdlib-only python3 (3.8+), copied there over SSH by cloudsd."""
