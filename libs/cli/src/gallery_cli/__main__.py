from gallery_cli.main import app

app(prog_name="gallery")
