"""The stand-in's A1111/Forge generation routes, as modules/api/api.py and models.py of A1111 v1.10.1 serve them.

- POST /sdapi/v1/txt2img and /img2img take `StableDiffusionProcessingTxt2Img`/`Img2Img` fields with their
  defaults (steps 50, cfg_scale 7.0, 512x512, seed -1, batch_size 1, n_iter 1, denoising_strength 0.75 for
  img2img, hr_scale 2.0, hr_second_pass_steps 0, send_images true, save_images false) and answer
  `{"images": [...], "parameters": <request>, "info": "<JSON>"}`. Jobs run one at a time (the queue lock).
- An unknown sampler is 404 "Sampler not found", an unknown checkpoint in override_settings 404 "Model not
  found", img2img without init_images 404 "Init image not found", an unknown hires upscaler a 500 from the
  processing code; a picture too large for the stand-in's 24 GB "GPU" is a 500 OutOfMemoryError. Errors have
  the api_middleware shape `{"error", "detail", "body", "errors"}`.
- GET /sdapi/v1/progress follows `progressapi` (progress 0.01 + job_no/job_count + step share, eta_relative
  from the elapsed time); POST /sdapi/v1/interrupt ends the job after the current step, keeping the pictures
  made so far unsaved (A1111 saves no incomplete picture unless save_incomplete_images).
- Each sampling step takes CLOUDSD_STANDIN_STEP_S seconds (or the number in /run/cloudsd/standin-step-s)
  at 512x512, scaled by the picture's area.
"""

from __future__ import annotations

import base64
import json
import random
import threading
import time
from collections.abc import Callable
from typing import Any

from standin_common import HTTPError, Reply, image_size, json_reply, parse_json, png_image, step_seconds

VRAM_PIXELS = 4096 * 4096  # more pixels than this in one batch runs the stand-in "GPU" out of memory
SAMPLERS = [
    ("DPM++ 2M", ["k_dpmpp_2m"]), ("DPM++ SDE", ["k_dpmpp_sde"]), ("DPM++ 2M SDE", ["k_dpmpp_2m_sde"]),
    ("DPM++ 2M SDE Heun", ["k_dpmpp_2m_sde_heun"]), ("DPM++ 2S a", ["k_dpmpp_2s_a"]),
    ("DPM++ 3M SDE", ["k_dpmpp_3m_sde"]), ("Euler a", ["k_euler_a"]), ("Euler", ["k_euler"]), ("LMS", ["k_lms"]),
    ("Heun", ["k_heun"]), ("DPM2", ["k_dpm_2"]), ("DPM2 a", ["k_dpm_2_a"]), ("DPM fast", ["k_dpm_fast"]),
    ("DPM adaptive", ["k_dpm_ad"]), ("Restart", ["restart"]), ("DDIM", ["ddim"]), ("PLMS", ["plms"]),
    ("UniPC", ["unipc"]), ("LCM", ["k_lcm"]),
]
SCHEDULERS = [("automatic", "Automatic"), ("uniform", "Uniform"), ("karras", "Karras"),
              ("exponential", "Exponential"), ("polyexponential", "Polyexponential"), ("sgm_uniform", "SGM Uniform"),
              ("kl_optimal", "KL Optimal"), ("align_your_steps", "Align Your Steps"), ("simple", "Simple"),
              ("normal", "Normal"), ("ddim", "DDIM"), ("beta", "Beta")]
LATENT_MODES = ["Latent", "Latent (antialiased)", "Latent (bicubic)", "Latent (bicubic antialiased)",
                "Latent (nearest)", "Latent (nearest-exact)"]
TXT2IMG_DEFAULTS: dict[str, Any] = {
    "prompt": "", "negative_prompt": "", "styles": None, "seed": -1, "subseed": -1, "subseed_strength": 0,
    "sampler_name": None, "scheduler": None, "batch_size": 1, "n_iter": 1, "steps": 50, "cfg_scale": 7.0,
    "width": 512, "height": 512, "denoising_strength": None, "override_settings": None,
    "enable_hr": False, "hr_scale": 2.0, "hr_upscaler": None, "hr_second_pass_steps": 0, "hr_resize_x": 0,
    "hr_resize_y": 0, "sampler_index": "Euler", "send_images": True, "save_images": False,
    "alwayson_scripts": {}, "script_name": None, "script_args": [],
}
IMG2IMG_DEFAULTS: dict[str, Any] = {**{k: v for k, v in TXT2IMG_DEFAULTS.items() if not k.startswith(("hr_", "enable_hr"))},
                                    "init_images": None, "denoising_strength": 0.75, "resize_mode": 0,
                                    "mask": None, "include_init_images": False}


def _error(status: int, detail: str = "", errors: str = "", error: str = "HTTPException") -> HTTPError:
    return HTTPError(status, {"error": error, "detail": detail, "body": "", "errors": errors or f"{status}: {detail}"})


class A1111Jobs:
    """Generation state shared by the routes: the queue lock and `shared.state` as progressapi reads it."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.queue_lock = threading.Lock()
        self.state_lock = threading.Lock()
        self.state: dict[str, Any] = {"job_count": 0, "job_no": 0, "sampling_step": 0, "sampling_steps": 0,
                                      "interrupted": False, "skipped": False, "job": "", "job_timestamp": "0",
                                      "time_start": 0.0}

    def routes(self) -> dict[tuple[str, str], Any]:
        return {
            ("POST", "/sdapi/v1/txt2img"): lambda q, b: self.process(b, img2img=False),
            ("POST", "/sdapi/v1/img2img"): lambda q, b: self.process(b, img2img=True),
            ("GET", "/sdapi/v1/progress"): lambda q, b: json_reply(self.progress()),
            ("POST", "/sdapi/v1/interrupt"): self.interrupt,
            ("POST", "/sdapi/v1/skip"): lambda q, b: json_reply(None),
            ("GET", "/sdapi/v1/samplers"): lambda q, b: json_reply(
                [{"name": n, "aliases": a, "options": {}} for n, a in SAMPLERS]),
            ("GET", "/sdapi/v1/schedulers"): lambda q, b: json_reply(
                [{"name": n, "label": label, "aliases": None, "default_rho": -1, "need_inner_model": False}
                 for n, label in SCHEDULERS]),
            ("GET", "/sdapi/v1/upscalers"): lambda q, b: json_reply(self.upscalers()),
            ("GET", "/sdapi/v1/latent-upscale-modes"): lambda q, b: json_reply([{"name": n} for n in LATENT_MODES]),
        }

    def upscalers(self) -> list[dict[str, Any]]:
        found = [{"name": "None", "model_name": None, "model_path": None, "model_url": None, "scale": 4},
                 {"name": "Lanczos", "model_name": None, "model_path": None, "model_url": None, "scale": 4},
                 {"name": "Nearest", "model_name": None, "model_path": None, "model_url": None, "scale": 4}]
        folder = self.app.data_dir / "models" / "ESRGAN"
        for path in sorted(folder.glob("*")) if folder.is_dir() else []:
            if path.suffix.lower() in (".pth", ".pt", ".safetensors"):
                found.append({"name": path.stem, "model_name": "ESRGAN_4x", "model_path": str(path),
                              "model_url": None, "scale": 4})
        return found

    # -- progress and interrupt -----------------------------------------------------------------------------
    def progress(self) -> dict[str, Any]:
        with self.state_lock:
            s = dict(self.state)
        public = {k: s[k] for k in ("skipped", "interrupted", "job", "job_count", "job_timestamp", "job_no",
                                    "sampling_step", "sampling_steps")}
        if s["job_count"] == 0:
            return {"progress": 0, "eta_relative": 0, "state": public, "current_image": None, "textinfo": None}
        progress = 0.01 + s["job_no"] / s["job_count"]
        if s["sampling_steps"] > 0:
            progress += 1 / s["job_count"] * s["sampling_step"] / s["sampling_steps"]
        since = time.time() - s["time_start"]
        eta = since / progress
        return {"progress": min(progress, 1), "eta_relative": eta - since, "state": public, "current_image": None,
                "textinfo": None}

    def interrupt(self, query: dict[str, list[str]], body: bytes) -> Reply:
        with self.state_lock:
            if self.state["job_count"]:
                self.state["interrupted"] = True
        return json_reply({})

    # -- txt2img / img2img ----------------------------------------------------------------------------------
    def process(self, body: bytes, *, img2img: bool) -> Reply:
        sent = parse_json(body)
        defaults = IMG2IMG_DEFAULTS if img2img else TXT2IMG_DEFAULTS
        req = {**defaults, **{k: v for k, v in sent.items() if v is not None or k not in defaults}}
        sampler = req.get("sampler_name") or req.get("sampler_index")
        names = {n.lower(): n for n, aliases in SAMPLERS for n in [n, *aliases]}
        if str(sampler).lower() not in names:
            raise _error(404, "Sampler not found")
        sampler = next(n for n, aliases in SAMPLERS if str(sampler).lower() in [n.lower(), *aliases])
        wanted = (req.get("override_settings") or {}).get("sd_model_checkpoint")
        if wanted and self.app.find_checkpoint(wanted) is None:
            raise _error(404, "Model not found")
        if img2img and not req.get("init_images"):
            raise _error(404, "Init image not found")
        scheduler = req.get("scheduler")
        if scheduler and not any(scheduler in (n, label) for n, label in SCHEDULERS):
            raise _error(500, error="KeyError", errors=repr(scheduler))  # sd_schedulers.schedulers_map[...]
        width, height = int(req["width"]), int(req["height"])
        hires = bool(req.get("enable_hr")) and not img2img
        upscaler = req.get("hr_upscaler") or "Latent"
        if hires and upscaler not in LATENT_MODES and upscaler not in [u["name"] for u in self.upscalers()]:
            raise _error(500, error="AssertionError", errors=f"could not find upscaler named {upscaler}")
        final_w, final_h = width, height
        if hires:
            final_w, final_h = int(width * float(req["hr_scale"])), int(height * float(req["hr_scale"]))
        batch, n_iter = int(req["batch_size"]), int(req["n_iter"])
        if final_w * final_h * batch > VRAM_PIXELS:
            raise _error(500, error="OutOfMemoryError",
                         errors=f"CUDA out of memory. Tried to allocate {final_w * final_h * batch * 4 / 2**30:.2f} "
                                "GiB (GPU 0; 24.00 GiB total capacity; 21.94 GiB already allocated)")
        with self.queue_lock:
            model, restore = self._load_for_job(req)
            try:
                return self._run(req, sent, img2img, sampler, scheduler, hires, upscaler, (width, height),
                                 (final_w, final_h), batch, n_iter, model)
            finally:
                restore()

    def _load_for_job(self, req: dict[str, Any]) -> tuple[dict[str, Any], Callable[[], None]]:
        """The checkpoint a job runs on, loaded (and so hashed) first: the override's, else the option's, else
        the first listed (`select_checkpoint`); and what undoes an override once the job is done (the option's
        model loaded again) unless `override_settings_restore_afterwards` is false."""
        app = self.app
        previous = app.options.get("sd_model_checkpoint")
        override = (req.get("override_settings") or {}).get("sd_model_checkpoint")
        found = app.find_checkpoint(override or previous) or (app.checkpoints[0] if app.checkpoints else None)
        if found is None:
            return {}, lambda: None
        model = app.load_checkpoint(found)

        def restore() -> None:
            if override and req.get("override_settings_restore_afterwards", True):
                before = app.find_checkpoint(previous)
                if before is not None:
                    app.load_checkpoint(before)
                else:
                    app.options["sd_model_checkpoint"] = previous

        return model, restore

    def _run(self, req: dict[str, Any], sent: dict[str, Any], img2img: bool, sampler: str, scheduler: str | None,
             hires: bool, upscaler: str, size: tuple[int, int], final: tuple[int, int], batch: int,
             n_iter: int, model: dict[str, Any]) -> Reply:
        prompt, negative = str(req["prompt"]), str(req["negative_prompt"])
        seed = int(req["seed"])
        if seed == -1:
            seed = random.randrange(2**32)
        steps, cfg = int(req["steps"]), float(req["cfg_scale"])
        denoise = req.get("denoising_strength")
        hr_steps = int(req.get("hr_second_pass_steps") or 0) or steps
        first_pass = steps if not img2img else max(1, int(steps * float(denoise or 0.75)))
        total_steps = first_pass + (hr_steps if hires else 0)
        loras = self._loras(prompt)
        with self.state_lock:
            self.state.update(job_count=n_iter, job_no=0, sampling_step=0, sampling_steps=total_steps,
                              interrupted=False, job="scripts_img2img" if img2img else "scripts_txt2img",
                              job_timestamp=time.strftime("%Y%m%d%H%M%S"), time_start=time.time())
        step_s = step_seconds(final[0] * final[1] * batch)
        images: list[bytes] = []
        seeds: list[int] = []
        infotexts: list[str] = []
        interrupted = False
        try:
            for iteration in range(n_iter):
                with self.state_lock:
                    self.state.update(job_no=iteration, sampling_step=0)
                for step in range(total_steps):
                    with self.state_lock:
                        if self.state["interrupted"]:
                            interrupted = True
                            break
                        self.state["sampling_step"] = step + 1
                    time.sleep(step_s)
                batch_seeds = [seed + iteration * batch + i for i in range(batch)]
                for s in batch_seeds:
                    params = [f"Steps: {steps}", f"Sampler: {sampler}"]
                    if req.get("scheduler"):
                        label = next(lbl for n, lbl in SCHEDULERS if req["scheduler"] in (n, lbl))
                        params.append(f"Schedule type: {label}")
                    params += [f"CFG scale: {cfg:g}", f"Seed: {s}", f"Size: {size[0]}x{size[1]}"]
                    if model:
                        params += [f"Model hash: {model['hash']}", f"Model: {model['model_name']}"]
                    if img2img or hires:
                        params.append(f"Denoising strength: {float(denoise if denoise is not None else 0.7):g}")
                    if hires:
                        params += [f"Hires upscale: {float(req['hr_scale']):g}"]
                        if req.get("hr_second_pass_steps"):
                            params.append(f"Hires steps: {int(req['hr_second_pass_steps'])}")
                        params.append(f"Hires upscaler: {upscaler}")
                    if loras:
                        params.append('Lora hashes: "' + ", ".join(f"{n}: {h}" for n, h in loras) + '"')
                    params.append("Version: v1.10.1")
                    text = "\n".join([prompt] + ([f"Negative prompt: {negative}"] if negative else [])
                                     + [", ".join(params)])
                    infotexts.append(text)
                    seeds.append(s)
                    images.append(png_image(*image_size({"width": final[0], "height": final[1]}),
                                            f"{prompt}\x00{negative}\x00{s}\x00{model.get('hash')}\x00{steps}",
                                            {"parameters": text}))
                if interrupted:
                    break
        finally:
            with self.state_lock:
                self.state.update(job_count=0, job_no=0, sampling_step=0, sampling_steps=0)
        self._maybe_save(req, images, seeds, img2img, interrupted)
        info = {
            "prompt": prompt, "all_prompts": [prompt] * len(images), "negative_prompt": negative,
            "all_negative_prompts": [negative] * len(images), "seed": seed, "all_seeds": seeds,
            "subseed": -1, "all_subseeds": [-1] * len(images), "subseed_strength": 0,
            "width": size[0], "height": size[1], "sampler_name": sampler, "cfg_scale": cfg, "steps": steps,
            "batch_size": batch, "restore_faces": False, "sd_model_name": model.get("model_name"),
            "sd_model_hash": model.get("hash"), "denoising_strength": denoise, "extra_generation_params": {},
            "index_of_first_image": 0, "infotexts": infotexts, "styles": [], "job_timestamp": self.state["job_timestamp"],
            "clip_skip": 1, "is_using_inpainting_conditioning": False, "version": "v1.10.1",
        }
        sent_images = [base64.b64encode(p).decode() for p in images] if req.get("send_images", True) else []
        parameters = {**req}
        if img2img and not req.get("include_init_images"):
            parameters["init_images"] = None
        return json_reply({"images": sent_images, "parameters": parameters, "info": json.dumps(info)})

    def _loras(self, prompt: str) -> list[tuple[str, str]]:
        import re

        known = {lora["name"].lower(): lora for lora in self.app.loras}
        found = []
        for match in re.finditer(r"<lora:([^:>]+)(?::[^>]*)?>", prompt):
            lora = known.get(match.group(1).lower())
            if lora is not None:
                found.append((lora["name"], "0123456789ab"))
        return found

    def _maybe_save(self, req: dict[str, Any], images: list[bytes], seeds: list[int], img2img: bool,
                    interrupted: bool) -> None:
        import types

        save = bool(req.get("save_images", False))
        p = types.SimpleNamespace(is_api=True, prompt=req["prompt"], seeds=seeds, do_not_save_samples=not save,
                                  do_not_save_grid=not save)
        for script in self.app.scripts:
            script.process(p)
        if not p.do_not_save_samples and not interrupted:
            self.app._save(images, seeds, "img2img-images" if img2img else "txt2img-images")
