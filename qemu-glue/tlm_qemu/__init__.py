"""tlm_qemu — the Python side of tlm's QEMU orchestration (standard library only).

Modules, each also a command (`python3 -m tlm_qemu.MODULE ...`, with the qemu-glue
directory on PYTHONPATH; scripts/lib/py.sh's tlm_py sets it up for the shell scripts):
    qmp       a small QMP client (library and one-command CLI)
    vm        launch and drive the test guests (QEMU + the memload workload)
    migrate   the `--mode tlm` of scripts/migrate-postcopy.sh (tlm moves the guest RAM)
    report    the migration report, the same for every mode, and the comparison table
    events    record a QEMU's QMP events (the downtime of the qemu and precopy modes)
"""
