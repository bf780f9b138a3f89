"""Object storage: one interface, two backends (S3/MinIO and a local directory), and the
content-addressed blob + manifest layer every service uses on top of it."""
