"""Small real WAV files for recording tests."""

import wave


def write_wav(path, seconds=1, rate=8000):
    """A mono 16-bit WAV of `seconds` at `rate`, with non-silent samples; returns `path`."""
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(bytes((i * 31) % 251 for i in range(seconds * rate * 2)))
    return path
