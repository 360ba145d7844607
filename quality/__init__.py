"""The quality record: every inspected part, its image and review, the dashboard and andon alerts.

A FastAPI service over SQLAlchemy (SQLite embedded, PostgreSQL by URL) with Alembic
migrations, and the review web app. It takes station results in the wire format of
`zerodefect.inference.wire` and never imports the station (`zerodefect.edge`).
"""
