"""cloudsd: save every picture made through the API, as the web UI saves its own.

A1111 and Forge write API renders to outputs/ only when the request carries "save_images": true, and the
field defaults to false, so a picture made from a script or a phone app would be lost with the machine.
This always-on script, a built-in extension of the cloudsd A1111 and Forge images
(/opt/cloudsd/app/extensions-builtin/cloudsd/), turns saving on for API requests, so `cloudsd` can pull
those pictures like any other. Set CLOUDSD_SAVE_API_IMAGES=0 in the machine's environment to turn it off.

The testbed's stand-in loads this same file (images/testbed/standin_a1111.py), so CI checks it.
"""

import os

from modules import scripts


class CloudsdSaveApiImages(scripts.Script):
    def title(self):
        return "cloudsd: save API images"

    def show(self, is_img2img):
        return scripts.AlwaysVisible

    def process(self, p, *args):
        # Runs before sampling; the samples and grids are saved after it, when these flags allow.
        if getattr(p, "is_api", False) and os.environ.get("CLOUDSD_SAVE_API_IMAGES", "1") != "0":
            p.do_not_save_samples = False
            p.do_not_save_grid = False
