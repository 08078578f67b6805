"""The frames the bench replays: the bundled demo photos, as images in memory or a video."""

from __future__ import annotations

from pathlib import Path

from pi_daemon.errors import PiDaemonError

# Each demo photo is held this many frames in the replay, as a camera watching a scene
# would: the log sink then logs label changes at a realistic rate, not every frame.
HOLD_FRAMES = 30
MIB = 1024 * 1024


def write_replay(directory: Path, size: tuple[int, int], kind: str) -> list[Path]:
    """Real frames from the bundled demo photos, centre-cropped to `size`'s aspect.

    `images`: PNG files that the files source decodes once and replays from memory, as a
    camera hands over buffers already in RAM. The default size is the model's input, which
    is what the Pi camera's lores stream delivers (the ISP scales for free).
    `video`: an MJPG video, so every frame is also decoded on the capture thread, as with
    a USB camera or a stream; `--replay-size 640x480` makes that realistic.
    Each photo is held for several frames, like a camera watching a scene, so the log sink
    logs label changes at a realistic rate rather than on every frame.
    """
    import cv2

    from pi_daemon.images import decode_image
    from pi_daemon.preprocess import center_crop_box
    from pi_daemon.sources.files import bundled_demo_paths

    width, height = size
    # Images are replayed from memory: keep the decoded set around 16 MiB at most.
    hold = max(1, min(HOLD_FRAMES, (16 * MIB) // (width * height * 3 * 3)))
    pictures = []
    for photo in bundled_demo_paths():
        image = cv2.cvtColor(decode_image(photo), cv2.COLOR_RGB2BGR)  # OpenCV writes BGR
        x, y, w, h = center_crop_box(image.shape[1], image.shape[0], width, height)
        pictures.append(
            cv2.resize(image[y : y + h, x : x + w], (width, height), interpolation=cv2.INTER_AREA)
        )
    if kind == "images":
        paths = []
        for number, picture in enumerate(pictures):
            path = directory / f"replay-{number}-{width}x{height}.png"
            cv2.imwrite(str(path), picture)
            paths += [path] * hold
        return paths
    path = directory / f"replay-{width}x{height}.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), 30.0, (width, height))
    if not writer.isOpened():
        raise PiDaemonError(f"{path}: OpenCV cannot write an MJPG video here")
    try:
        for picture in pictures:
            for _ in range(HOLD_FRAMES):
                writer.write(picture)
    finally:
        writer.release()
    return [path]
