"""A cell's files between a worker's scratch results dir and the driver's: what changed, written atomically,
with the worker's paths replaced by the driver's."""

from ptq_deploy.suite import transfer


def _write(root, rel, data: bytes):
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)


def test_changed_files_travel_and_name_the_receivers_paths(tmp_path):
    worker, driver = tmp_path / "scratch" / "results", tmp_path / "driver" / "results"
    _write(worker, "checkpoints/m/A/model.safetensors", b"old weights")
    _write(worker, "checkpoints/m/A/stale.bin", b"x")
    snap = transfer.Snapshot(worker)
    assert snap.changed() == {}
    _write(worker, "checkpoints/m/A/config.json", b'{"from": "' + str(worker).encode() + b'/checkpoints/m/A"}')
    _write(worker, "steps/m/A/compress.json", b'{"checkpoint": "' + str(worker).encode() + b'/checkpoints/m/A"}')
    _write(worker, "logs/m/A/compress.log", b"wrote " + str(worker).encode())
    files = snap.changed()
    # one file of a checkpoint changed: the checkpoint travels whole; the unchanged log of nothing else does
    assert set(files) == {"checkpoints/m/A/model.safetensors", "checkpoints/m/A/stale.bin",
                          "checkpoints/m/A/config.json", "steps/m/A/compress.json", "logs/m/A/compress.log"}
    assert snap.changed() == {}
    _write(driver, "checkpoints/m/A/left-over.bin", b"from an older compress")
    transfer.write_files(driver, files, worker)
    assert sorted(p.name for p in (driver / "checkpoints/m/A").iterdir()) == \
           ["config.json", "model.safetensors", "stale.bin"]  # the directory replaced as a whole
    assert (driver / "steps/m/A/compress.json").read_text() == f'{{"checkpoint": "{driver}/checkpoints/m/A"}}'
    assert (driver / "logs/m/A/compress.log").read_text() == f"wrote {driver}"
    assert (driver / "checkpoints/m/A/model.safetensors").read_bytes() == b"old weights"  # binary: as is
    assert not list(driver.rglob(".ptq-tmp-*"))
    assert transfer.cell_inputs(driver, "m", "A").keys() == {f"checkpoints/m/A/{n}" for n in
                                                             ("config.json", "model.safetensors", "stale.bin")}
