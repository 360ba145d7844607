from zerodefect.cli import app

app()
