"""A real MJPEG-over-HTTP server on a loopback socket, for stream-failure tests.

It behaves like the cheap IP cameras users point pi-daemon at: multipart JPEG
over HTTP. Tests script each connection: serve N frames, then stall or hang up,
and stop accepting to simulate a camera that went away.
"""

from __future__ import annotations

import socket
import threading
import time

import cv2
import numpy as np


class MjpegServer:
    def __init__(
        self,
        frames_per_connection: list[int],
        stall_s: float = 30.0,
        image: np.ndarray | None = None,
    ) -> None:
        picture = image if image is not None else np.full((240, 320, 3), 120, np.uint8)
        self.jpeg = cv2.imencode(".jpg", picture)[1].tobytes()
        self.plan = list(frames_per_connection)
        self.stall_s = stall_s
        self.connections = 0
        self._stop = threading.Event()
        self._sock = socket.socket()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen()
        self.port = self._sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/stream.mjpg"
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            if not self.plan:  # the camera is gone: hang up at once
                conn.close()
                continue
            count = self.plan.pop(0)
            self.connections += 1
            threading.Thread(target=self._stream, args=(conn, count), daemon=True).start()

    def _stream(self, conn: socket.socket, count: int) -> None:
        try:
            conn.recv(4096)
            conn.sendall(
                b"HTTP/1.0 200 OK\r\nContent-Type: multipart/x-mixed-replace; "
                b"boundary=frame\r\n\r\n"
            )
            for _ in range(count):
                conn.sendall(
                    b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n"
                    % len(self.jpeg)
                    + self.jpeg
                    + b"\r\n"
                )
                time.sleep(0.01)
            self._stop.wait(self.stall_s)  # stall with the connection open
        except OSError:
            pass
        finally:
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._sock.close()
