"""The four-hospital heart-disease federation, set up in one folder.

The demo federation has the hub and four hospitals of the UCI Heart Disease
data (Cleveland Clinic; Hungarian Institute of Cardiology, Budapest; University
Hospitals of Zurich and Basel; VA Long Beach), each with its own keys, pinned
copies of the schema and roster, its own privacy policy and its own ledger.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml

from federation_hub.config import FEDERATION_FILE
from federation_hub.credentials import create_federation_credentials
from policies.models import load_study_policy
from schemas import HEART_DISEASE_SCHEMA_PATH

PROJECT_ROOT = Path(__file__).resolve().parents[1]
HEART_DISEASE_DATA_DIR = PROJECT_ROOT / "data" / "heart-disease"
POLICIES_DIR = PROJECT_ROOT / "policies" / "bundled"
STUDY_POLICY_PATH = POLICIES_DIR / "heart_disease_study.yaml"
DEMO_MARKER = ".healthfed-demo"

HOSPITAL_FILES = {
    "cleveland": "processed.cleveland.data",
    "hungarian": "processed.hungarian.data",
    "switzerland": "processed.switzerland.data",
    "va": "processed.va.data",
}


class DemoSetupError(RuntimeError):
    """The demo folder cannot be created."""


def create_demo_federation(
    directory: Path,
    *,
    data_dir: Path = HEART_DISEASE_DATA_DIR,
    study_policy: Path = STUDY_POLICY_PATH,
    hospital_policies_dir: Path = POLICIES_DIR,
    fresh: bool = False,
) -> Path:
    """Create the federation folder of the heart-disease demo and return it.

    With ``fresh``, a folder created earlier by this function (it holds the
    marker file) is removed first, ledgers included; any other existing folder
    is left alone and an error names it.
    """
    directory = directory.resolve()
    if directory.exists() and any(directory.iterdir()):
        if not fresh:
            raise DemoSetupError(
                f"{directory} exists and is not empty; pass --fresh to replace an "
                "earlier demo folder, or choose another --dir"
            )
        if not (directory / DEMO_MARKER).exists():
            raise DemoSetupError(
                f"{directory} was not created by the demo (no {DEMO_MARKER} file); "
                "refusing to delete it, choose another --dir"
            )
        shutil.rmtree(directory)
    missing = [
        name for name in HOSPITAL_FILES.values() if not (data_dir / name).is_file()
    ]
    if missing:
        raise DemoSetupError(
            f"heart-disease records {missing} not found in {data_dir}; pass --data-dir "
            "with the folder holding the four processed.*.data files"
        )

    policy = load_study_policy(study_policy)
    hospitals = list(policy.hospitals)
    unknown = [h for h in hospitals if h not in HOSPITAL_FILES]
    if unknown:
        raise DemoSetupError(
            f"study policy names hospitals {unknown} that the demo lacks"
        )

    directory.mkdir(parents=True, exist_ok=True)
    (directory / DEMO_MARKER).write_text(
        "created by federation-hub demo\n", encoding="utf-8"
    )
    credentials = create_federation_credentials(
        directory, hospitals, federation="heart-disease-demo"
    )
    shutil.copyfile(study_policy, directory / "study.yaml")
    shutil.copyfile(HEART_DISEASE_SCHEMA_PATH, directory / "schema.yaml")
    _write_yaml(
        directory / FEDERATION_FILE,
        {
            "study_policy": "study.yaml",
            "schema": "schema.yaml",
            "roster": "roster.yaml",
            "identity_key": str(credentials.hub_identity_key.relative_to(directory)),
            "state_dir": "hub/state",
        },
    )

    for hospital_id in hospitals:
        folder = directory / "hospitals" / hospital_id
        shutil.copyfile(HEART_DISEASE_SCHEMA_PATH, folder / "schema.yaml")
        shutil.copyfile(credentials.roster, folder / "roster.yaml")
        shutil.copyfile(
            hospital_policies_dir / f"hospital_{hospital_id}.yaml",
            folder / "policy.yaml",
        )
        identity = credentials.hospital(hospital_id).identity_key
        _write_yaml(
            folder / "agent.yaml",
            {
                "hospital_id": hospital_id,
                "data": str((data_dir / HOSPITAL_FILES[hospital_id]).resolve()),
                "schema": "schema.yaml",
                "policy": "policy.yaml",
                "identity_key": str(identity.relative_to(folder)),
                "roster": "roster.yaml",
                "state_dir": "state",
            },
        )
    return directory


def _write_yaml(path: Path, document: dict[str, object]) -> None:
    path.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
