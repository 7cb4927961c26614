#!/usr/bin/env python3
"""Independent cross-check of blindrelay's resume vector (PROTOCOL.md 10.8).

Rebuilds with the `noiseprotocol` package (pip install noiseprotocol), a Noise
implementation that shares no code with snow, what protocol/src/noise.rs pins in
the test `the_resume_id_and_a_resume_handshake_are_pinned`:

1. The session of section 10.7 made resumable: the same keys (player static
   [1]*32, host static [2]*32, ephemerals [3]*32 and [4]*32), a hello whose payload
   is 32 zero bytes, and the verdict "welcome, resumable" (body 0x02). Its resume id
   is BLAKE2s-256(b"blindrelay/1 resume id" || k1 || k2), k1 and k2 the two cipher
   keys of the handshake's Split() (player to host, then host to player).
2. A resume of it with ephemerals [5]*32 (player) and [6]*32 (host): the hello
   whose payload is that id, the reply, the verdict "resumed" (body 0x03), the
   host's ack of 14 and the player's ack of 6 (an ack's body is the count as 8
   big-endian bytes, its type byte 0x04). The SHA-256 of that wire transcript.

Prints both and exits 1 on a mismatch.
Run: python3 benches/vectors/resume_crosscheck.py
"""

import hashlib
import struct
import sys
import warnings

from cryptography.hazmat.primitives.asymmetric import x25519
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from noise.connection import Keypair, NoiseConnection

EXPECTED_ID = "10d23e8385e35510253b6e1f730584f260ba682b6ff050fa42c24fe97a24800a"
EXPECTED_DIGEST = "435d59853782a444a0661d33bba32fb023899434556091141c7d86b764dd5391"

NAME = b"Noise_IK_25519_AESGCM_BLAKE2s"
PROLOGUE = b"blindrelay/1 session Noise_IK_25519_AESGCM_BLAKE2s"
LABEL = b"blindrelay/1 resume id"
PLAYER_STATIC = bytes([1] * 32)
HOST_STATIC = bytes([2] * 32)

VERDICT, ACK = 0x03, 0x04
WELCOME_RESUMABLE, RESUMED = 0x02, 0x03


def public(secret: bytes) -> bytes:
    return (
        x25519.X25519PrivateKey.from_private_bytes(secret)
        .public_key()
        .public_bytes(Encoding.Raw, PublicFormat.Raw)
    )


def frame(message: bytes) -> bytes:
    assert len(message) <= 65535
    return struct.pack(">H", len(message)) + bytes(message)


def handshake(payload: bytes, player_ephemeral: bytes, host_ephemeral: bytes, verdict: int):
    """One IK handshake and the host's verdict: the two connections and the wire."""
    player = NoiseConnection.from_name(NAME)
    player.set_as_initiator()
    player.set_prologue(PROLOGUE)
    player.set_keypair_from_private_bytes(Keypair.STATIC, PLAYER_STATIC)
    player.set_keypair_from_private_bytes(Keypair.EPHEMERAL, player_ephemeral)
    player.set_keypair_from_public_bytes(Keypair.REMOTE_STATIC, public(HOST_STATIC))
    player.start_handshake()

    host = NoiseConnection.from_name(NAME)
    host.set_as_responder()
    host.set_prologue(PROLOGUE)
    host.set_keypair_from_private_bytes(Keypair.STATIC, HOST_STATIC)
    host.set_keypair_from_private_bytes(Keypair.EPHEMERAL, host_ephemeral)
    host.start_handshake()

    hello = bytes(player.write_message(payload))
    assert len(hello) == 32 + 48 + 16 + len(payload), len(hello)
    assert bytes(host.read_message(hello)) == payload
    reply = bytes(host.write_message(b""))
    assert bytes(player.read_message(reply)) == b""
    verdict_frame = host.encrypt(bytes([verdict, VERDICT]))
    assert player.decrypt(verdict_frame) == bytes([verdict, VERDICT])
    return player, host, frame(hello) + frame(reply) + frame(verdict_frame)


def resume_id(player: NoiseConnection) -> bytes:
    # The initiator encrypts with Split()'s first key and decrypts with its second.
    state = player.noise_protocol
    k1 = state.cipher_state_encrypt.k
    k2 = state.cipher_state_decrypt.k
    return hashlib.blake2s(LABEL + k1 + k2).digest()


def main() -> int:
    # noiseprotocol warns (rightly) whenever an ephemeral key is fixed.
    warnings.simplefilter("ignore")

    player, _, wire = handshake(bytes(32), bytes([3] * 32), bytes([4] * 32), WELCOME_RESUMABLE)
    assert len(wire) == 2 + 128 + 2 + 48 + 2 + 18
    session_id = resume_id(player)
    print(f"resume id: {session_id.hex()}")
    print(f"expected:  {EXPECTED_ID}")

    player, host, transcript = handshake(session_id, bytes([5] * 32), bytes([6] * 32), RESUMED)
    for sender, count in [(host, 14), (player, 6)]:
        transcript += frame(sender.encrypt(struct.pack(">Q", count) + bytes([ACK])))
    digest = hashlib.sha256(transcript).hexdigest()
    print(f"resume transcript: {len(transcript)} B, sha256 {digest}")
    print(f"expected:          {EXPECTED_DIGEST}")
    if session_id.hex() != EXPECTED_ID or digest != EXPECTED_DIGEST:
        print("MISMATCH", file=sys.stderr)
        return 1
    print("OK: noiseprotocol reproduces the pinned resume vector")
    return 0


if __name__ == "__main__":
    sys.exit(main())
