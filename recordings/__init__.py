"""Call recordings: storage (S3 or a local directory), unguessable playback URLs, and the playback app.

This package owns boto3; nothing else in the project imports it.
"""
