"""The HACS repository tree that `make hacs` builds, against HACS's and hassfest's rules.

The schemas are transcribed from HACS's `custom_components/hacs/utils/validate.py`
(HACS_MANIFEST_JSON_SCHEMA for hacs.json, INTEGRATION_MANIFEST_JSON_SCHEMA for the manifest) and
the structure rules from https://www.hacs.xyz/docs/publish/integration/ ; the manifest keys a
custom integration needs from the Home Assistant developer docs,
https://developers.home-assistant.io/docs/creating_integration_manifest .
"""

from __future__ import annotations

import json
import re
import struct
import subprocess
import tomllib
from pathlib import Path

import pytest
import voluptuous as vol
from awesomeversion import AwesomeVersion
from integration_fixtures import REPO_ROOT

import rkllm_mqtt

DOMAIN = "rkllm_mqtt"
PROJECT_URL = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["urls"]["Homepage"]


def _version(value: str) -> str:
    if not AwesomeVersion(value).valid:
        raise vol.Invalid(f"{value!r} is not a version AwesomeVersion recognizes")
    return value


def _url(value: str) -> str:
    if not re.fullmatch(r"https://[^\s/]+(/\S*)?", value):
        raise vol.Invalid(f"{value!r} is not an https URL")
    return value


HACS_JSON_SCHEMA = vol.Schema(
    {
        vol.Optional("content_in_root"): bool,
        vol.Optional("country"): vol.Any(str, [str]),
        vol.Optional("filename"): str,
        vol.Optional("hacs"): _version,
        vol.Optional("hide_default_branch"): bool,
        vol.Optional("homeassistant"): _version,
        vol.Optional("persistent_directory"): str,
        vol.Optional("render_readme"): bool,
        vol.Optional("zip_release"): bool,
        vol.Required("name"): str,
    },
    extra=vol.PREVENT_EXTRA,
)

INTEGRATION_MANIFEST_SCHEMA = vol.Schema(
    {
        vol.Required("codeowners"): [vol.Match(r"^@[A-Za-z0-9-]+(/[A-Za-z0-9_.-]+)?$")],
        vol.Required("documentation"): _url,
        vol.Required("domain"): str,
        vol.Required("issue_tracker"): _url,
        vol.Required("name"): str,
        vol.Required("version"): _version,
        # hassfest's values for the keys the manifest sets
        vol.Required("integration_type"): vol.In(
            ["device", "entity", "hardware", "helper", "hub", "service", "system", "virtual"]
        ),
        vol.Required("iot_class"): vol.In(
            ["assumed_state", "calculated", "cloud_polling", "cloud_push", "local_polling", "local_push"]
        ),
        vol.Required("config_flow"): bool,
        vol.Required("dependencies"): [str],
        vol.Required("requirements"): [str],
    },
    extra=vol.ALLOW_EXTRA,
)


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("hacs") / "repo"
    subprocess.run(["bash", str(REPO_ROOT / "ha_integration" / "build-hacs.sh"), str(out)], check=True,
                   capture_output=True)
    return out


def test_the_tree_has_the_layout_hacs_requires(tree: Path) -> None:
    # One integration, at custom_components/<domain>/ in the repository root, hacs.json beside it.
    assert sorted(p.name for p in (tree / "custom_components").iterdir()) == [DOMAIN]
    assert (tree / "custom_components" / DOMAIN / "manifest.json").is_file()
    root = sorted(p.name for p in tree.iterdir())
    assert root == ["LICENSE", "README.md", "custom_components", "hacs.json"]
    assert not list(tree.rglob("__pycache__"))
    # GitHub's licence detection must find Apache-2.0 (pyproject's licence).
    license_text = (tree / "LICENSE").read_text()
    assert license_text.lstrip().startswith("Apache License\n")
    assert "Version 2.0, January 2004" in license_text
    assert "END OF TERMS AND CONDITIONS" in license_text
    assert PROJECT_URL in (tree / "README.md").read_text()


def test_hacs_json_passes_hacs_schema(tree: Path) -> None:
    hacs = HACS_JSON_SCHEMA(json.loads((tree / "hacs.json").read_text()))
    # The oldest Home Assistant the tests run on.
    assert hacs["homeassistant"] == "2025.4.4"


def test_the_manifest_passes_hacs_and_hassfest(tree: Path) -> None:
    raw = (tree / "custom_components" / DOMAIN / "manifest.json").read_text()
    manifest = INTEGRATION_MANIFEST_SCHEMA(json.loads(raw))
    assert manifest["domain"] == DOMAIN
    assert manifest["version"] == rkllm_mqtt.__version__
    # hassfest: domain and name first, then the other keys in alphabetical order.
    keys = list(json.loads(raw))
    assert keys[:2] == ["domain", "name"] and keys[2:] == sorted(keys[2:])
    assert manifest["codeowners"] == ["@rkllm-mqtt"]
    assert manifest["documentation"].startswith(f"{PROJECT_URL}/")
    assert manifest["issue_tracker"] == f"{PROJECT_URL}/issues"
    assert set(manifest["dependencies"]) == {"conversation", "mqtt"}
    assert manifest["config_flow"] is True
    assert (tree / "custom_components" / DOMAIN / "config_flow.py").is_file()


def test_the_brand_icon_is_a_square_png(tree: Path) -> None:
    """Home Assistant 2026.3+ serves a custom integration's own brand/ images (256 and 512 px)."""
    for name, size in (("icon.png", 256), ("icon@2x.png", 512)):
        data = (tree / "custom_components" / DOMAIN / "brand" / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        width, height = struct.unpack(">II", data[16:24])
        assert (width, height) == (size, size)
