"""`headlens push`: share an HRV on the Hugging Face Hub (files + generated model card + heatmap)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from . import app
from .common import echo, stdout


PUSH_EXAMPLES = """Examples:

  headlens push world-hrv me/world-hrv --folder upload-preview

  headlens push sd15-hrv me/sd15-hrv --private
"""


@app.command("push", epilog=PUSH_EXAMPLES)
def push_command(
    hrv_dir: Annotated[Path, typer.Argument(help="HRV folder (from `headlens build`), paper:NAME or hf://OWNER/REPO.")],
    repo_id: Annotated[str, typer.Argument(help="Hub model repo to create or update, OWNER/NAME.")],
    private: bool = typer.Option(False, "--private", help="Create the repo as private."),
    token: str = typer.Option(None, "--token", help="Hub token (default: the one `huggingface-cli login` stored, or HF_TOKEN)."),
    folder: Path = typer.Option(None, "--folder", help="Only write the folder that would be uploaded (HRV files, README.md model card, heatmap.png) here; upload nothing."),
) -> None:
    """Upload an HRV to the Hugging Face Hub; load it anywhere with `--hrv hf://OWNER/NAME`."""
    from headlens import HRV, hub

    hrv = HRV.load(str(hrv_dir))
    repo_id = hub.check_repo_id(repo_id)
    if folder is not None:
        d = hub.write_folder(hrv, folder, repo_id)
        echo(f"wrote the upload folder of {repo_id} to {d} (nothing uploaded)")
        stdout(str(d))
        return
    result = hrv.push_to_hub(repo_id, token=token, private=private)
    echo(f"pushed {hrv!r} to https://huggingface.co/{repo_id}")
    stdout(str(result))
