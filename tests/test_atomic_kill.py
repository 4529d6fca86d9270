"""Artifacts are never half-written: SIGKILL a process mid-write, the previous artifact stays loadable."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent

# The child replaces the artifact through the library's own code path, with np.savez / json writing
# slowed down so that it is certainly killed half-way: it writes part of the data, says so, then stalls.
CHILD = textwrap.dedent(
    """
    import sys, time
    import numpy as np
    sys.path.insert(0, {root!r})
    import core.artifacts as artifacts

    def stall(handle, data):
        handle.write(data[: len(data) // 2]); handle.flush()
        print("HALF", flush=True)
        time.sleep(60)

    kind, target = sys.argv[1], sys.argv[2]
    if kind == "features":
        from core.featurize import FeatureCache
        real_savez = np.savez
        def slow_savez(handle, **arrays):
            import io
            buffer = io.BytesIO(); real_savez(buffer, **arrays); stall(handle, buffer.getvalue())
        np.savez = slow_savez

        class Fake:
            fingerprint = "fake"
            def embed(self, images):
                return np.ones((len(images), 4), np.float32)
        from core.data import ImageRecord
        import core.featurize as featurize
        featurize.iter_embed_files = lambda featurizer, paths, batch_size=32, progress=None: iter(
            [featurize.EmbeddedBatch(0, ["new" * 20], np.full((1, 4), 2.0, np.float32))]
        )
        FeatureCache(target).embed(Fake(), [ImageRecord(Path_ := __import__("pathlib").Path("x.jpg"), "a", "new" * 20)])
    elif kind == "npz":
        real_savez = np.savez
        def slow_savez(handle, **arrays):
            import io
            buffer = io.BytesIO(); real_savez(buffer, **arrays); stall(handle, buffer.getvalue())
        np.savez = slow_savez
        artifacts.atomic_save_npz(target, weights=np.full((2000, 1000), 7.0, np.float32))
    else:
        import json
        real_dumps = json.dumps
        artifacts.atomic_write(target, lambda handle: stall(handle, real_dumps({{"status": "new", "pad": "x" * 10**6}}).encode()))
    """
)


def kill_mid_write(kind: str, target: Path) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD.format(root=str(ROOT)), kind, str(target)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = child.stdout.readline()
        assert line.strip() == "HALF", child.stderr.read()
        time.sleep(0.05)
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=10)
    assert child.returncode == -signal.SIGKILL


@pytest.mark.parametrize("kind", ["features", "npz", "json"])
def test_sigkill_mid_write_leaves_previous_artifact_intact(tmp_path, kind):
    from core.artifacts import atomic_save_npz, atomic_write_json, read_json
    from core.featurize import FeatureCache

    if kind == "features":
        cache = FeatureCache(tmp_path / "features")
        target = cache.path_for("fake")
        atomic_save_npz(target, sha256=np.array(["old" * 20]), embeddings=np.ones((1, 4), np.float32))
        before = target.read_bytes()
        kill_mid_write(kind, tmp_path / "features")
        assert target.read_bytes() == before
        loaded = cache.load("fake")
        assert list(loaded) == ["old" * 20] and np.array_equal(loaded["old" * 20], np.ones(4, np.float32))
    elif kind == "npz":
        target = tmp_path / "rankers" / "svm.npz"
        atomic_save_npz(target, weights=np.arange(6.0))
        before = target.read_bytes()
        kill_mid_write(kind, target)
        assert target.read_bytes() == before
        with np.load(target, allow_pickle=False) as archive:
            np.testing.assert_array_equal(archive["weights"], np.arange(6.0))
    else:
        target = tmp_path / "runs" / "r" / "manifest.json"
        atomic_write_json(target, {"status": "complete"})
        kill_mid_write(kind, target)
        assert read_json(target) == {"status": "complete"}
    # the half-written temp file is left behind (SIGKILL runs no clean-up), but under a name no loader uses
    leftovers = [p for p in target.parent.iterdir() if p != target]
    # a featurize saves its first batch as a part at once, so the kill lands in that part's write
    prefix = ".fake.part-" if kind == "features" else f".{target.name}."
    assert len(leftovers) == 1 and leftovers[0].name.startswith(prefix) and leftovers[0].name.endswith(".tmp")
    assert leftovers[0].stat().st_size > 0
    assert list(target.parent.glob(f"*{target.suffix}")) == [target]
    if kind != "json":
        with pytest.raises((ValueError, OSError, EOFError, zipfile.BadZipFile)):  # the partial file really is unusable
            np.load(leftovers[0], allow_pickle=False)
    else:
        with pytest.raises(json.JSONDecodeError):
            json.loads(leftovers[0].read_text())
