"""The agent of one region: pulls tasks, fetches and verifies image bytes, creates the image in its glance."""
