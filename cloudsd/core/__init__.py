"""What cloudsd does, in plain data in and out: no click, no rich. The CLI renders what these return."""
