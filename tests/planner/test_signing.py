"""The planner signs every intent it publishes, and will not run without a signing seed."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from nats.aio.client import Client

from services.cli.main import main as l2net
from services.planner.service import Planner
from shared.domain import model
from shared.runtime import bus
from shared.wire import signing, subjects
from shared.wire.intents import canonical_bytes
from tests import keys
from tests.kit import until
from tests.planner.conftest import make_node, register
from tests.planner.test_service import VMS, apply


async def test_every_published_intent_is_signed_by_the_planners_key(
    nc: Client, planner: Planner, seed_text: str
) -> None:
    for name in ("node-1", "node-2"):
        await register(nc, make_node(name))
    # Each joined node's first (empty) intent first: a submission that comes before the
    # planner's worker reaches a node gives it generation 1 with the seed, one intent fewer.
    await until(lambda: {"node-1", "node-2"} <= set(planner.intents))
    assert (await apply(nc, seed_text + VMS)).ok
    js = nc.jetstream()
    info = await js.stream_info(subjects.STREAM_INTENTS)
    signed = 0
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        raw = await js.get_msg(subjects.STREAM_INTENTS, seq)
        intent = bus.decode(raw.data or b"", model.NodeIntent)
        assert signing.verify(intent, [keys.PUBLIC]) == keys.PUBLIC
        assert raw.subject == subjects.intent(intent.node)
        signed += 1
    print(f"published intents signed by the planner's key: {signed}/{info.state.messages}")
    assert signed == info.state.messages >= 4  # generation 1 and 2 of each node
    # Its memory keeps the unsigned content: what it signs is exactly what it compiled.
    last = bus.decode(raw.data or b"", model.NodeIntent)
    assert canonical_bytes(last) == canonical_bytes(planner.intents[last.node])


def test_a_planner_needs_a_valid_seed() -> None:
    with pytest.raises(signing.KeyError_):
        Planner(None, signing_seed="SNOTASEED")  # type: ignore[arg-type]
    with pytest.raises(signing.KeyError_):
        Planner(None, signing_seed=keys.PUBLIC)  # type: ignore[arg-type]


def test_the_planner_refuses_to_start_without_a_signing_key(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.delenv("L2NET_SIGNING_KEY_FILE", raising=False)
    assert l2net(["planner", "--nats", "nats://127.0.0.1:1"]) == 2
    assert "the planner signs every intent: give its seed with --signing-key FILE" in (
        capsys.readouterr().out
    )
    missing = tmp_path / "nowhere.seed"
    assert l2net(["planner", "--signing-key", str(missing)]) == 2
    assert f"cannot read signing seed {missing}" in capsys.readouterr().out
    wrong = tmp_path / "public.key"
    wrong.write_text(keys.PUBLIC + "\n")
    assert l2net(["planner", "--signing-key", str(wrong)]) == 2
    assert f"{wrong}: not an nkeys seed" in capsys.readouterr().out


def test_generate_makes_a_private_seed_once_and_prints_its_public_key(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.delenv("L2NET_SIGNING_KEY_FILE", raising=False)
    seed_file = tmp_path / "keys" / "planner.seed"
    args = ["planner", "--signing-key", str(seed_file), "--generate-signing-key"]
    assert l2net([*args, "--print-public-key"]) == 0
    public = capsys.readouterr().out.strip()
    seed = seed_file.read_text().strip()
    assert signing.public_key(seed) == public
    assert stat.S_IMODE(os.stat(seed_file).st_mode) == 0o600
    assert seed not in public
    # Again: the same file, the same key (never overwritten).
    assert l2net([*args, "--print-public-key"]) == 0
    assert capsys.readouterr().out.strip() == public
    # From the environment, as deploy/ passes it.
    monkeypatch.setenv("L2NET_SIGNING_KEY_FILE", str(seed_file))
    assert l2net(["planner", "--print-public-key"]) == 0
    assert capsys.readouterr().out.strip() == public


def test_generate_without_a_file_uses_the_labs_key(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.delenv("L2NET_SIGNING_KEY_FILE", raising=False)
    monkeypatch.setenv("L2NET_LAB_DIR", str(tmp_path / "lab"))
    assert l2net(["planner", "--generate-signing-key", "--print-public-key"]) == 0
    public = capsys.readouterr().out.strip()
    lab_seed = tmp_path / "lab" / "signing.seed"
    assert signing.public_key(signing.load_seed(lab_seed)) == public
