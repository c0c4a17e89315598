"""The publishing workflow (.github/workflows/images.yml) builds what cloudsd pulls: every flavor in every
CUDA variant, named by cloudsd itself. (scripts/test.sh lints it with check-jsonschema and zizmor.)"""

from __future__ import annotations

from pathlib import Path

import yaml

from cloudsd.ui import CUDA_VARIANTS, PROFILES

WORKFLOW = Path(__file__).resolve().parents[1] / ".github" / "workflows" / "images.yml"


def test_the_matrix_is_every_flavor_in_every_cuda_variant_on_a_version_tag() -> None:
    flow = yaml.safe_load(WORKFLOW.read_text())
    triggers = flow[True]  # YAML 1.1 reads the key `on` as true
    assert triggers == {"push": {"tags": ["v*"]}}
    job = flow["jobs"]["publish"]
    assert sorted(job["strategy"]["matrix"]["ui"]) == sorted(PROFILES)
    assert job["strategy"]["matrix"]["cuda"] == list(CUDA_VARIANTS)
    assert flow["permissions"] == {} and job["permissions"] == {"contents": "read", "packages": "write"}


def test_the_image_name_comes_from_cloudsd_and_the_build_from_images() -> None:
    steps = {step.get("name", step.get("uses", "")): step for step in
             yaml.safe_load(WORKFLOW.read_text())["jobs"]["publish"]["steps"]}
    naming = steps["The name cloudsd pulls"]["run"]
    assert "profile(sys.argv[1]).image(sys.argv[2], sys.argv[3])" in naming
    assert "from cloudsd.ui import DEFAULT_REGISTRY" in naming
    build = steps["Build"]["run"]
    assert build == ('docker build --pull -f "images/$UI/Dockerfile" --build-arg "CUDA=$CUDA" -t "$IMAGE" '
                     "images/")
    assert 'docker push "$IMAGE"' in steps["Push"]["run"]
