"""A training process that is killed at a chosen moment (started by tests/cli/test_cli.py).

    python tests/workers/kill_worker.py FOLDER MODE [AT]

MODE: ``mid-write`` SIGKILLs itself halfway through writing checkpoint number AT (the file's
first half on disk, not yet renamed); ``callback`` SIGKILLs itself from the progress callback
of epoch AT, after training that epoch and before its checkpoint; ``resume`` continues from
the newest checkpoint to the end; ``straight`` trains without checkpoints. The last two save
the final W to FOLDER/W-MODE.npy. Deterministic: the kill lands where the process says.
"""

import io
import os
import signal
import sys

import numpy as np
import optax

import jsoftmax
from jsoftmax.io import files as storage
from jsoftmax._verify import random_problem

EPOCHS = 8


def die():
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def main():
    folder, mode = sys.argv[1], sys.argv[2]
    at = int(sys.argv[3]) if len(sys.argv) > 3 else 0
    params, X, y, _ = random_problem(300, 8, 5, dtype="float32", seed=0, bias=True)
    callback = None
    if mode == "mid-write":
        real_savez, saves = np.savez, [0]

        def savez(handle, **arrays):
            saves[0] += 1
            if saves[0] < at:
                return real_savez(handle, **arrays)
            buffer = io.BytesIO()
            real_savez(buffer, **arrays)
            handle.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
            handle.flush()
            die()

        storage.np.savez = savez
    elif mode == "callback":
        def callback(info):
            if info["epoch"] == at:
                die()

    result = jsoftmax.fit(params, X, y, optax.adam(0.05), batch_size=64, max_epochs=EPOCHS, seed=1,
                          callback=callback,
                          checkpoint_dir=None if mode == "straight" else folder,
                          resume=mode in ("resume", "callback") and bool(storage.list_checkpoints(folder)))
    np.save(os.path.join(folder, f"W-{mode}.npy"), np.asarray(result.params.W))


if __name__ == "__main__":
    main()
