"""Handler code: the example morning-outreach workflow, and whatever users add."""
