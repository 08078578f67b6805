"""Times one backend in another Python (`pi-daemon bench --compare-python PATH`).

Run as a script, `python worker.py JSON`, by an interpreter that may not have pi-daemon
installed at all (say, a venv with tflite-runtime and numpy<2): it imports only the
standard library, numpy and the backend's own module, and prints one JSON object.
"""

import importlib
import json
import sys
import time


def main(args: dict) -> dict:
    out: dict = {}
    try:
        import numpy as np

        out["numpy"] = np.__version__
        module = importlib.import_module(args["module"])
        interpreter = module.Interpreter(model_path=args["model"], num_threads=args["threads"])
        interpreter.allocate_tensors()
        detail = interpreter.get_input_details()[0]
        interpreter.set_tensor(detail["index"], np.load(args["input"]).astype(detail["dtype"]))
        for _ in range(5):
            interpreter.invoke()
        started = time.perf_counter()
        for _ in range(args["frames"]):
            interpreter.invoke()
        out["ms"] = (time.perf_counter() - started) / args["frames"] * 1e3
        try:
            from importlib.metadata import version

            out["version"] = version(args["dist"])
        except Exception:
            out["version"] = "unknown"
    except Exception as error:
        out["error"] = f"{type(error).__name__}: {' '.join(str(error).split())[:300]}"
    return out


if __name__ == "__main__":
    print(json.dumps(main(json.loads(sys.argv[1]))))
