"""A user who meets the bundled model anywhere (the weights' manifest, the README, the Slicer panel's help) is
pointed at its model card, and the card describes these weights, not an earlier set."""

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CARD = ROOT / "MODEL_CARD.md"
MANIFEST = ROOT / "Resources" / "Models" / "vertebrae_net.json"


def test_the_model_card_describes_the_bundled_weights():
    card = CARD.read_text(encoding="utf-8")
    manifest = json.loads(MANIFEST.read_text(encoding="utf-8"))
    assert manifest["sha256"] in card, "MODEL_CARD.md names other weights than Resources/Models/vertebrae_net.pt"
    for section in ("## Intended use", "## Training data", "## Evaluation", "## Known failure modes"):
        assert section in card
    assert "not a medical device" in card.lower()


def test_the_manifest_readme_and_slicer_help_link_the_model_card():
    manifest = json.loads(MANIFEST.read_text(encoding="utf-8"))
    assert manifest.get("model_card", "").endswith("/MODEL_CARD.md")
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "(MODEL_CARD.md)" in readme
    module = (ROOT / "VertebraeLabeling" / "VertebraeLabeling.py").read_text(encoding="utf-8")
    help_text = re.search(r"helpText = _\((.*?)\n\s*\)\n", module, re.S)
    assert help_text and "MODEL_CARD.md" in help_text.group(1)
    training_guide = (ROOT / "training" / "README.md").read_text(encoding="utf-8")
    assert "(../MODEL_CARD.md)" in training_guide
