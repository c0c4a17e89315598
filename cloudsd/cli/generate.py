"""`cloudsd generate NAME PROMPT`: pictures from the terminal through the machine's own web UI."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from cloudsd.cli.app import App, pass_app


@click.command("generate")
@click.argument("name")
@click.argument("prompt", required=False)
@click.option("--negative", help="Negative prompt.")
@click.option("--checkpoint", help="Checkpoint by name or A1111 short hash; switches the loaded model.")
@click.option("--lora", "loras", multiple=True, metavar="NAME[:WEIGHT]",
              help="A LoRA and its weight (repeatable); <lora:NAME:WEIGHT> in the prompt works too.")
@click.option("--steps", type=int, help="Sampling steps.")
@click.option("--cfg", type=float, help="CFG scale.")
@click.option("--sampler", help="Sampler, e.g. 'DPM++ 2M' or 'Euler a'.")
@click.option("--scheduler", help="Scheduler, e.g. Karras.")
@click.option("--size", metavar="WxH", help="Picture size, e.g. 512x768.")
@click.option("--seed", type=int, help="Seed of the first picture (random when left out, and printed).")
@click.option("--count", type=int, default=1, show_default=True, help="How many pictures.")
@click.option("--batch-size", type=int, help="Pictures per job on the GPU.")
@click.option("--hires", type=float, metavar="SCALE", help="Hires fix: upscale by SCALE and sample again.")
@click.option("--hires-steps", type=int, help="Steps of the hires pass (0: as many as --steps).")
@click.option("--denoise", type=float, help="Denoising strength of the hires pass or img2img.")
@click.option("--upscaler", help="Hires fix upscaler: Latent or an upscaler model's name.")
@click.option("--init-image", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="img2img: start from this picture.")
@click.option("--prompts", "prompts_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="One prompt a line, or YAML items with per-item overrides.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path),
              help="Where pictures land (default: outputs_dir/NAME, ~/cloudsd-outputs/NAME, where `sync outputs` "
                   "puts them).")
@click.option("--json", "as_json", is_flag=True, help="Print the pictures as JSON.")
@pass_app
def generate_cmd(app: App, name: str, prompt: str | None, negative: str | None, checkpoint: str | None,
                 loras: tuple[str, ...], steps: int | None, cfg: float | None, sampler: str | None,
                 scheduler: str | None, size: str | None, seed: int | None, count: int, batch_size: int | None,
                 hires: float | None, hires_steps: int | None, denoise: float | None, upscaler: str | None,
                 init_image: Path | None, prompts_file: Path | None, out: Path | None, as_json: bool) -> None:
    """Make pictures on a running machine with its own web UI (A1111, Forge or ComfyUI), over SSH.

    Pictures land in ~/cloudsd-outputs/NAME (the outputs_dir setting) as each finishes, with the UI's generation parameters in the
    PNG; they stay on the machine too, and `sync outputs`/`down` will not fetch them again. Defaults come
    from the `generate:` section of config.yaml. Ctrl-C interrupts the job on the machine and keeps what
    finished. Example:

    \b
    cloudsd generate mybox "portrait of ashe, <lora:Ashe2-8:0.9>" --checkpoint dreamshaper_8 \\
        --negative "lowres, bad hands" --count 8 --hires 2 --denoise 0.45 --seed 1234
    """
    from cloudsd.generate.request import GenerateRequest, check, load_prompts, parse_lora, parse_size

    flags = {"generate.negative": negative, "generate.checkpoint": checkpoint,
             "generate.loras": list(loras) or None, "generate.steps": steps, "generate.cfg": cfg,
             "generate.sampler": sampler, "generate.scheduler": scheduler, "generate.size": size,
             "generate.batch_size": batch_size, "generate.hires": hires, "generate.hires_steps": hires_steps,
             "generate.denoise": denoise, "generate.upscaler": upscaler}
    settings = app.configure(flags)
    if prompt is None and prompts_file is None:
        raise click.UsageError("give a PROMPT, or --prompts FILE")
    if init_image is not None and settings["generate.hires"]:
        raise click.UsageError("--hires is for txt2img; with --init-image use --denoise (img2img has no hires fix)")
    width, height = parse_size(settings["generate.size"])
    base = GenerateRequest(
        prompt=prompt or "", negative=settings["generate.negative"], checkpoint=settings["generate.checkpoint"],
        loras=tuple(parse_lora(v) for v in settings["generate.loras"]), steps=settings["generate.steps"],
        cfg=settings["generate.cfg"], sampler=settings["generate.sampler"],
        scheduler=settings["generate.scheduler"], width=width, height=height, seed=seed, count=count,
        batch_size=settings["generate.batch_size"], hires_scale=settings["generate.hires"],
        hires_steps=settings["generate.hires_steps"], denoise=settings["generate.denoise"],
        upscaler=settings["generate.upscaler"], init_image=init_image)
    requests = load_prompts(prompts_file, base) if prompts_file else [check(base)]
    if prompts_file and prompt:
        requests = [check(base), *requests]
    _run(app, name, requests, out, as_json)


class _Display:
    """A progress bar with the UI's own progress and ETA; one line per picture as it arrives."""

    def __init__(self, as_json: bool) -> None:
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

        from cloudsd.cli import render

        self.console = render.console(stderr=True)
        self.as_json = as_json
        self.bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                            TextColumn("{task.completed:.1f}/{task.total:.0f}"), TextColumn("{task.fields[eta]}"),
                            TextColumn("{task.fields[detail]}"), TimeRemainingColumn(),
                            console=self.console, transient=True, disable=as_json)
        self.task: Any = None

    def __enter__(self) -> _Display:
        self.bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.stop()

    def progress(self, done: float, total: int, eta_s: float | None, detail: str) -> None:
        if self.task is None:
            self.task = self.bar.add_task("generating", total=total, eta="", detail="")
        eta = f"ETA {eta_s:.0f}s (UI)" if eta_s else ""
        self.bar.update(self.task, completed=done, eta=eta, detail=detail)

    def picture(self, picture: Any) -> None:
        if not self.as_json:
            self.bar.console.print(f"  {picture.path}  seed {picture.seed}")

    def note(self, message: str) -> None:
        if not self.as_json:
            self.bar.console.print(f"  {message}")


def _run(app: App, name: str, requests: list[Any], out: Path | None, as_json: bool) -> None:
    from cloudsd.cli import render
    from cloudsd.core.generate import Interrupted, check_budget, open_session, plan_jobs, run
    from cloudsd.core.sync import default_outputs_dir

    console = render.console(stderr=True)
    ledger = app.ledger
    jobs = plan_jobs(requests)
    note = check_budget(ledger, ledger.get(name), jobs)
    session = open_session(ledger, app.providers, name)
    try:
        if note and not as_json:
            console.print(f"  {note}")
        dest = out if out is not None else default_outputs_dir(app.settings, name)
        try:
            with _Display(as_json) as display:
                result = run(requests, jobs, session.profile, session.forward.local_port, dest,
                             session.connection, display, ledger=ledger, name=name)
        except Interrupted as exc:
            console.print(f"Interrupted: the job on the machine was stopped; kept {len(exc.pictures)} "
                          f"finished picture(s) in {dest}.")
            if as_json:
                render.print_json({"pictures": [p.to_dict() for p in exc.pictures], "interrupted": True})
            sys.exit(130)
    finally:
        session.close()
    if as_json:
        render.print_json({"pictures": [p.to_dict() for p in result.pictures], "seconds": round(result.seconds, 3),
                           "dest": str(dest), "interrupted": False})
    else:
        console.print(render.styled((f"{len(result.pictures)} picture(s)", "bold green"),
                                    f" in {dest} ({result.seconds:.1f} s); also on the machine."))
