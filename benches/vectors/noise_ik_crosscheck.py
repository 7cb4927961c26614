#!/usr/bin/env python3
"""Independent cross-check of blindrelay's Noise session test vector.

Rebuilds, with the `noiseprotocol` package (pip install noiseprotocol; it is a
separate Noise implementation on top of pyca/cryptography, sharing no code with
snow), the wire transcript that protocol/src/noise.rs pins in the test
`known_vector_pins_handshake_and_framing`, and compares its SHA-256.

Inputs (raw X25519 secrets; X25519 clamps them):
  player static [1]*32, host static [2]*32,
  player ephemeral [3]*32, host ephemeral [4]*32,
  prologue b"blindrelay/1 session Noise_IK_25519_AESGCM_BLAKE2s",
  empty handshake payloads.
Wire: every Noise message is a 2-byte big-endian length then the message.
Transport plaintext: the body, then a type byte (0x00 data, 0x01 end, 0x03 verdict).
  host -> player: verdict "welcome" (body 0x00), sent with the reply
  player -> host: data b"GET /movie.mkv", then end
  host -> player: data b"200 OK"

Prints each framed message and the digest; exits 1 on mismatch.
Run: python3 benches/vectors/noise_ik_crosscheck.py
"""

import hashlib
import struct
import sys
import warnings

from cryptography.hazmat.primitives.asymmetric import x25519
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from noise.connection import Keypair, NoiseConnection

EXPECTED = "f43b4db74f529e9b60576c87062d4a4432a973fa9016a7254cfc0b693f0c39d9"

NAME = b"Noise_IK_25519_AESGCM_BLAKE2s"
PROLOGUE = b"blindrelay/1 session Noise_IK_25519_AESGCM_BLAKE2s"
PLAYER_STATIC = bytes([1] * 32)
HOST_STATIC = bytes([2] * 32)
PLAYER_EPHEMERAL = bytes([3] * 32)
HOST_EPHEMERAL = bytes([4] * 32)

DATA, END, VERDICT = 0x00, 0x01, 0x03
WELCOME = 0x00


def public(secret: bytes) -> bytes:
    return (
        x25519.X25519PrivateKey.from_private_bytes(secret)
        .public_key()
        .public_bytes(Encoding.Raw, PublicFormat.Raw)
    )


def frame(message: bytes) -> bytes:
    assert len(message) <= 65535
    return struct.pack(">H", len(message)) + bytes(message)


def main() -> int:
    # noiseprotocol warns (rightly) whenever an ephemeral key is fixed.
    warnings.simplefilter("ignore")

    player = NoiseConnection.from_name(NAME)
    player.set_as_initiator()
    player.set_prologue(PROLOGUE)
    player.set_keypair_from_private_bytes(Keypair.STATIC, PLAYER_STATIC)
    player.set_keypair_from_private_bytes(Keypair.EPHEMERAL, PLAYER_EPHEMERAL)
    player.set_keypair_from_public_bytes(Keypair.REMOTE_STATIC, public(HOST_STATIC))
    player.start_handshake()

    host = NoiseConnection.from_name(NAME)
    host.set_as_responder()
    host.set_prologue(PROLOGUE)
    host.set_keypair_from_private_bytes(Keypair.STATIC, HOST_STATIC)
    host.set_keypair_from_private_bytes(Keypair.EPHEMERAL, HOST_EPHEMERAL)
    host.start_handshake()

    messages = []  # (label, framed bytes)

    hello = bytes(player.write_message(b""))
    assert len(hello) == 32 + 48 + 16, len(hello)
    messages.append(("hello   (player -> host, -> e, es, s, ss)", frame(hello)))
    assert bytes(host.read_message(hello)) == b""

    reply = bytes(host.write_message(b""))
    assert len(reply) == 32 + 16, len(reply)
    messages.append(("reply   (host -> player, <- e, ee, se)", frame(reply)))
    assert bytes(player.read_message(reply)) == b""
    assert player.handshake_finished and host.handshake_finished
    assert player.get_handshake_hash() == host.get_handshake_hash()

    for label, sender, receiver, plaintext in [
        ("verdict (host -> player) welcome", host, player, bytes([WELCOME, VERDICT])),
        ("data    (player -> host) 'GET /movie.mkv'", player, host, b"GET /movie.mkv" + bytes([DATA])),
        ("end     (player -> host)", player, host, bytes([END])),
        ("data    (host -> player) '200 OK'", host, player, b"200 OK" + bytes([DATA])),
    ]:
        ciphertext = sender.encrypt(plaintext)
        assert receiver.decrypt(ciphertext) == plaintext
        messages.append((label, frame(ciphertext)))

    transcript = b"".join(m for _, m in messages)
    print(f"handshake hash h: {player.get_handshake_hash().hex()}")
    for label, m in messages:
        print(f"{label}: {len(m)} B  sha256 {hashlib.sha256(m).hexdigest()[:16]}  {m.hex()}")
    digest = hashlib.sha256(transcript).hexdigest()
    print(f"transcript: {len(transcript)} B")
    print(f"sha256:   {digest}")
    print(f"expected: {EXPECTED}")
    if digest != EXPECTED:
        print("MISMATCH", file=sys.stderr)
        return 1
    print("OK: noiseprotocol reproduces the pinned vector")
    return 0


if __name__ == "__main__":
    sys.exit(main())
