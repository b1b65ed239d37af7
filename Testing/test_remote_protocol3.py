"""Protocol 3: deltas against the client's mirror, mask versions, negotiation with protocol 2, the delta codec.

Against a REAL uvicorn server on 127.0.0.1 (the fixtures and helpers of ``test_remote.py``): the mirror stays equal
to a local session's mask through a seeded random sequence of steps; a lost reply, a step by another client and
a protocol-2 step in between are detected by the mask version and repaired with the whole mask; bad input changes
nothing; a protocol-3 client falls back to a protocol-2 server, and protocol-2 clients keep being served.
"""

from __future__ import annotations

import contextlib
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
requests = pytest.importorskip("requests")

from test_remote import (  # noqa: E402  (fixtures and helpers shared with the protocol-2 tests)
    TOKEN,
    _run,
    api,
    assert_clean_error,
    centre_ras,
    checkpoint,  # noqa: F401  (fixture)
    ct_image,
    model,  # noqa: F401  (fixture)
    organ_in_roi_box,
    running_server,
    server,  # noqa: F401  (fixture)
)

from SAMVolSegmentLib.engine.mask_update import MaskUpdate  # noqa: E402
from SAMVolSegmentLib.engine.predictor import Predictor  # noqa: E402
from SAMVolSegmentLib.engine.session import InteractiveSession  # noqa: E402
from SAMVolSegmentLib.errors import InvalidPromptError, ProtocolMismatchError, ServerUnavailableError  # noqa: E402
from SAMVolSegmentLib.remote import RemoteSession, ServerConfig  # noqa: E402
from SAMVolSegmentLib.remote.protocol import (  # noqa: E402
    MASK_CODECS,
    MASK_VERSION_HEADER,
    PROTOCOL_HEADER,
    UPDATE_MEDIA_TYPE,
    WireFormatError,
    api_prefix,
    apply_delta,
    decode_delta,
    decode_frame,
    encode_delta,
    encode_frame,
    foreground_box,
    mask_delta,
    mask_runs,
)

V3, V2 = api_prefix(3), api_prefix(2)


# ---------------------------------------------------------------- the codec
def _round_trip(old: np.ndarray, new: np.ndarray, codec: str) -> dict:
    """Encode ``old`` → ``new`` as the server does, decode and apply it as the client does; the header."""
    mirror, client = old.copy(), old.copy()
    update = MaskUpdate(tuple((0, n) for n in new.shape), new)  # type: ignore[arg-type]
    whole = tuple((0, n) for n in old.shape) if old.any() else None  # a box holding the mirror's foreground
    change, bound = mask_delta(mirror, update, whole)
    np.testing.assert_array_equal(mirror, new)  # the server's mirror follows the step
    assert (bound is None) == (not old.any() and not new.any())
    meta, body = ({"form": "none"}, b"") if change is None else encode_delta(
        change.xor, change.new, codec, [lo for lo, _ in change.region])
    header, payload = decode_frame(encode_frame({"update": meta}, body))
    apply_delta(client, *decode_delta(header["update"], payload, new.shape))
    np.testing.assert_array_equal(client, new)
    return meta


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2 ** 31), density=st.floats(0.0, 1.0), flips=st.floats(0.0, 0.2),
       shape=st.tuples(st.integers(1, 9), st.integers(1, 40), st.integers(1, 300)))
def test_delta_codec_round_trips_any_masks(seed, density, flips, shape):
    rng = np.random.default_rng(seed)
    old = (rng.random(shape) < density).astype(np.uint8)
    new = old ^ (rng.random(shape) < flips).astype(np.uint8)
    for codec in MASK_CODECS:
        meta = _round_trip(old, new, codec)
        assert meta["form"] == ("none" if np.array_equal(old, new) else meta["form"])


def test_delta_codec_picks_the_cheaper_form_and_long_runs():
    organ = organ_in_roi_box().mask
    moved = np.roll(organ, 1, axis=2)  # the whole surface moves: the new content is cheaper than the XOR
    assert _round_trip(organ, moved, MASK_CODECS[0])["form"] == "set"
    touched = organ.copy()
    touched[60, 170, 120:126] ^= 1  # a few voxels change: the XOR is tiny
    meta = _round_trip(organ, touched, MASK_CODECS[0])
    assert meta["form"] == "xor" and meta["runs"] <= 3 and meta["box"] == [[60, 61], [170, 171], [120, 126]]
    assert _round_trip(organ, organ, "zlib") == {"form": "none"}
    big = np.zeros((300, 300, 300), np.uint8)  # runs beyond 255 and 65535 voxels
    big[100:200, 50:250, 7:290] = 1
    assert _round_trip(np.zeros_like(big), big, "zlib")["big"] > 0
    runs = mask_runs(big)
    assert runs.sum() == big.size and len(runs) == 2 * 100 * 200 + 1
    whole, body = encode_delta(None, organ, "zlib")  # a whole-mask reply: from empty
    assert whole["form"] == "set"
    restored = np.zeros_like(organ)
    apply_delta(restored, *decode_delta(whole, body, organ.shape))
    np.testing.assert_array_equal(restored, organ)
    assert encode_delta(None, np.zeros_like(organ), "zlib") == ({"form": "none"}, b"")  # an empty whole mask


def test_only_where_the_mirror_or_the_step_has_foreground_is_compared():
    organ = organ_in_roi_box().mask
    (k0, k1), (j0, j1), (i0, i1) = foreground_box(organ)
    mirror = np.zeros((130, 360, 270), np.uint8)
    mirror[5:125, 5:355, 5:265] = organ
    bound = ((k0 + 5, k1 + 5), (j0 + 5, j1 + 5), (i0 + 5, i1 + 5))  # the mirror's foreground box
    grown = organ.copy()
    grown[50:60, 10:20, 10:20] = 1  # a new blob outside the organ's box
    change, bound = mask_delta(mirror, MaskUpdate(((5, 125), (5, 355), (5, 265)), grown), bound)
    assert change is not None and change.region == ((k0, k1), (10, j1), (10, i1))  # not the whole box
    assert bound == ((k0 + 5, k1 + 5), (15, j1 + 5), (15, i1 + 5))
    np.testing.assert_array_equal(mirror[5:125, 5:355, 5:265], grown)
    meta, body = encode_delta(change.xor, change.new, "zlib", [lo for lo, _ in change.region])
    assert meta["form"] == "xor" and meta["box"] == [[50, 60], [10, 20], [10, 20]]
    client = np.zeros_like(mirror)
    client[5:125, 5:355, 5:265] = organ
    apply_delta(client[5:125, 5:355, 5:265], *decode_delta(meta, body, grown.shape))
    np.testing.assert_array_equal(client, mirror)
    assert mask_delta(mirror, MaskUpdate(((0, 2), (0, 2), (0, 2)), np.zeros((2, 2, 2), np.uint8)), bound) == (
        None, bound)  # nothing was or is foreground there: nothing compared


def test_an_organ_sized_delta_stays_under_20_kb():
    """The issue's reply target, for the first click (from empty) and for a refinement that moves the surface."""
    organ = organ_in_roi_box().mask
    first = encode_delta(organ, organ, MASK_CODECS[0])[1]
    assert len(first) <= 20_000, len(first)
    grown = np.roll(organ, 2, axis=1) | organ
    assert len(encode_delta(organ ^ grown, grown, MASK_CODECS[0])[1]) <= 20_000


def test_delta_decoder_refuses_corrupt_or_inconsistent_data():
    new = np.zeros((4, 5, 6), np.uint8)
    new[1:3, 1:4, 2:5] = 1
    meta, body = encode_delta(new, new, "zlib")
    decode_delta(meta, body, new.shape)
    for bad, match in (({**meta, "form": "paint"}, "form"), ({**meta, "codec": "zstd"}, "codec"),
                       ({**meta, "runs": 10 ** 9}, "cannot have"), ({**meta, "runs": True}, "cannot have"),
                       ({**meta, "big": -1}, "cannot have"), ({**meta, "runs": meta["runs"] - 1}, "match")):
        with pytest.raises(WireFormatError, match=match):
            decode_delta(bad, body, new.shape)
    with pytest.raises(WireFormatError, match="cover"):
        decode_delta({**meta, "box": [[0, 4], [0, 5], [0, 6]]}, body, new.shape)  # runs that do not fill it
    with pytest.raises(WireFormatError, match="outside the volume"):
        decode_delta({**meta, "box": [[0, 9], [0, 5], [0, 6]]}, body, new.shape)  # a part outside the box
    with pytest.raises(WireFormatError, match="does not match|corrupt"):
        decode_delta(meta, body[:-3], new.shape)
    with pytest.raises(WireFormatError, match="carries bytes"):
        decode_delta({"form": "none"}, b"x", new.shape)
    with pytest.raises(WireFormatError, match="not a protocol-3 frame"):
        decode_frame(json.dumps({"update": {}}).encode())
    with pytest.raises(WireFormatError, match="truncated"):
        decode_frame(encode_frame({"update": meta}, body)[:12])


# ---------------------------------------------------------------- the mirror through random sequences
def _random_ops(image, rng: np.random.Generator, count: int):
    """A seeded sequence of every kind of step (clicks near the structure, undo/redo/reset, box, initial mask)."""
    c = centre_ras(image)
    shape = image.GetSize()[::-1]
    ops = []
    for _ in range(count):
        kind = rng.choice(["click", "click", "click", "undo", "redo", "reset", "box", "clear_box", "initial"],
                          p=[0.2, 0.15, 0.15, 0.15, 0.1, 0.05, 0.08, 0.05, 0.07])
        if kind == "click":
            ops.append(("click", (c + rng.uniform(-8, 8, 3) * [1, 1, 0.5], bool(rng.random() < 0.75))))
        elif kind == "box":
            half = rng.uniform(6, 14, 3)
            ops.append(("box", (c - half, c + half)))
        elif kind == "initial":
            mask = np.zeros(shape, np.uint8)
            k, j, i = (int(rng.integers(0, n - 4)) for n in shape)
            mask[k:k + 4, j:j + 9, i:i + 7] = 1
            ops.append(("initial", (mask if rng.random() < 0.8 else None,)))
        else:
            ops.append((kind, ()))
    return ops


def _step(session, op, args):
    if op == "initial":
        return session.set_initial_mask(*args)
    return _run(session, op, args)


@contextlib.contextmanager
def _pair(server_url, model, image, protocol=None):  # noqa: F811
    """A local session and a remote one (``protocol`` None: negotiated) on ``image``; both closed afterwards."""
    with InteractiveSession(Predictor(model)) as local:
        remote = RemoteSession(server_url, token=TOKEN, protocol=protocol)
        try:
            local.set_volume(image)
            remote.set_volume(image)
            yield local, remote
        finally:
            remote.close()


@pytest.mark.parametrize("seed", [0, 1])
def test_the_mirror_equals_the_local_mask_through_random_steps(server, model, seed):  # noqa: F811
    image = ct_image(seed=seed)
    with _pair(server, model, image) as (local, remote):
        assert remote.protocol == 3
        bases = []
        remote._http.hooks["response"].append(
            lambda r, *a, **k: bases.append(decode_frame(r.content)[0]["update"]["base"])
            if r.headers.get("content-type", "").startswith(UPDATE_MEDIA_TYPE) else None)
        caller_copy = np.zeros(image.GetSize()[::-1], np.uint8)  # what a caller applying each update holds
        for op, args in _random_ops(image, np.random.default_rng(seed), 24):
            expected, got = _step(local, op, args), _step(remote, op, args)
            assert got.bbox_kji == expected.bbox_kji, op
            np.testing.assert_array_equal(got.mask, expected.mask, err_msg=op)
            got.apply_to(caller_copy)
            np.testing.assert_array_equal(remote.mask_array_kji(), local.mask_array_kji(), err_msg=op)
            assert (remote.can_undo, remote.can_redo, len(remote.clicks)) == (
                local.can_undo, local.can_redo, len(local.clicks)), op
        assert local.mask_array_kji().any()
        np.testing.assert_array_equal(caller_copy, local.mask_array_kji())
        assert None not in bases, "every reply was a delta against the mirror (no whole mask needed)"
        assert bases == list(range(len(bases))), "versions advance by one a step"
        np.testing.assert_array_equal(remote.server_mask_array_kji(), local.mask_array_kji())


# ---------------------------------------------------------------- versions: mismatch detected, mirror repaired


def test_a_lost_reply_is_detected_and_the_whole_mask_fetched(server, model):  # noqa: F811
    image = ct_image(seed=3)
    c = centre_ras(image)
    with _pair(server, model, image) as (local, remote):
        for session in (local, remote):
            session.add_click(c, True)
        real = remote._http.request

        def lose_the_reply(*args, **kwargs):
            real(*args, **kwargs)  # the server runs the step...
            raise requests.exceptions.ConnectionError("connection reset by peer")  # ...its reply never arrives

        remote._http.request = lose_the_reply
        with pytest.raises(ServerUnavailableError):
            remote.add_click(c + [4.0, 0.0, 0.0], True)
        remote._http.request = real
        local.add_click(c + [4.0, 0.0, 0.0], True)
        assert remote._mask_version is None  # the mirror is unknown now
        np.testing.assert_array_equal(remote.mask_array_kji(), local.mask_array_kji())  # fetched first
        expected, got = local.add_click(c + [0.0, 4.0, 0.0], False), remote.add_click(c + [0.0, 4.0, 0.0], False)
        np.testing.assert_array_equal(remote.mask_array_kji(), local.mask_array_kji())
        assert got.bbox_kji == expected.bbox_kji or got.mask.size >= expected.mask.size


def test_a_corrupt_reply_leaves_the_mirror_unknown_and_it_is_fetched_again(server, model):  # noqa: F811
    image = ct_image(seed=12)
    c = centre_ras(image)
    with _pair(server, model, image) as (local, remote):

        def corrupt(response, *args, **kwargs):
            if response.headers.get("content-type", "").startswith(UPDATE_MEDIA_TYPE):
                response._content = response.content[:-4]  # the payload loses its last bytes
            return response

        remote._http.hooks["response"].append(corrupt)
        with pytest.raises(WireFormatError):
            remote.add_click(c, True)
        remote._http.hooks["response"].remove(corrupt)
        local.add_click(c, True)
        assert remote._mask_version is None
        np.testing.assert_array_equal(remote.mask_array_kji(), local.mask_array_kji())


def test_a_step_the_client_did_not_see_makes_the_next_reply_the_whole_mask(server, model):  # noqa: F811
    image = ct_image(seed=4)
    c = centre_ras(image)
    with _pair(server, model, image) as (local, remote):
        caller_copy = np.zeros(image.GetSize()[::-1], np.uint8)
        for session in (local, remote):
            session.add_click(c, True)
        remote.mask_array_kji()
        caller_copy[...] = remote.mask_array_kji()
        # Another client (or a retried request) steps the same server session: the server's version moves on.
        other = api(server, "POST", f"{V3}/sessions/{remote._sid}/click", headers={PROTOCOL_HEADER: "3"},
                    json={"point_ras": [float(v) for v in c + [5.0, 0.0, 0.0]], "positive": True})
        assert other.ok and decode_frame(other.content)[0]["update"]["base"] is None  # no version named: whole mask
        local.add_click(c + [5.0, 0.0, 0.0], True)
        local.undo()
        got = remote.undo()  # the client names its old version: the server sends everything
        got.apply_to(caller_copy)
        np.testing.assert_array_equal(remote.mask_array_kji(), local.mask_array_kji())
        np.testing.assert_array_equal(caller_copy, local.mask_array_kji())  # the update covered the unseen step too


def test_a_protocol_2_step_in_between_invalidates_the_servers_mirror(server, model):  # noqa: F811
    image = ct_image(seed=5)
    c = centre_ras(image)
    with _pair(server, model, image) as (local, remote):
        for session in (local, remote):
            session.add_click(c, True)
        reply = api(server, "POST", f"{V2}/sessions/{remote._sid}/click",
                    json={"point_ras": [float(v) for v in c + [0.0, -5.0, 0.0]], "positive": True})
        assert reply.ok and "bits" in reply.json()["update"]  # protocol 2: JSON, as before
        local.add_click(c + [0.0, -5.0, 0.0], True)
        local.add_click(c + [3.0, 3.0, 0.0], True)
        remote.add_click(c + [3.0, 3.0, 0.0], True)
        np.testing.assert_array_equal(remote.mask_array_kji(), local.mask_array_kji())


def test_bad_input_changes_neither_the_mask_nor_its_version(server, model):  # noqa: F811
    image = ct_image(seed=6)
    with _pair(server, model, image) as (local, remote):
        remote.add_click(centre_ras(image), True)
        version, before = remote._mask_version, remote.mask_array_kji()
        with pytest.raises(InvalidPromptError):
            remote.add_click((1e4, 1e4, 1e4), True)  # outside the volume: refused by the server
        assert remote._mask_version == version  # a clear refusal: the mirror is still known
        np.testing.assert_array_equal(remote.mask_array_kji(), before)
        body = assert_clean_error(api(server, "POST", f"{V3}/sessions/{remote._sid}/undo", json={},
                                      headers={MASK_VERSION_HEADER: "not-a-number"}), 422, "WireFormatError")
        assert MASK_VERSION_HEADER in body["detail"]
        for odd in ("²", "-1", "1e3", "9" * 40):  # a digit str.isdigit accepts but int refuses, a sign, too long
            assert_clean_error(api(server, "POST", f"{V3}/sessions/{remote._sid}/undo", json={},
                                   headers={MASK_VERSION_HEADER: odd.encode()}), 422, "WireFormatError")
        assert api(server, "GET", "/info", headers={PROTOCOL_HEADER: "²".encode()}).json()["protocol"] == 3
        remote.undo()  # still a delta against the same version: the bad requests moved nothing
        assert remote._mask_version == version + 1 and not remote.mask_array_kji().any()


def test_a_reply_for_another_version_is_refused_and_repaired(server, model):  # noqa: F811
    image = ct_image(seed=9)
    c = centre_ras(image)
    with _pair(server, model, image) as (local, remote):
        for session in (local, remote):
            session.add_click(c, True)
        remote._mask_version += 7  # as if the mirror had applied replies the server never sent
        expected = local.add_click(c + [2.0, 2.0, 0.0], True)
        got = remote.add_click(c + [2.0, 2.0, 0.0], True)  # the server sees a version it never sent: whole mask
        np.testing.assert_array_equal(remote.mask_array_kji(), local.mask_array_kji())
        assert got.mask.size > 0 and expected.mask.size > 0


# ---------------------------------------------------------------- negotiation
def _strip_protocols(response, *args, **kwargs):
    """Make /info answer as a protocol-2 server did: ``protocol`` only, no ``protocols``."""
    if response.url.endswith("/info"):
        data = response.json()
        data.pop("protocols", None)
        response._content = json.dumps(data).encode()
    return response


def test_a_protocol_3_client_falls_back_to_a_protocol_2_server(model, monkeypatch):  # noqa: F811
    image = ct_image(seed=10)
    c = centre_ras(image)
    with running_server(model, ServerConfig(token=TOKEN, protocols=(2,))) as url:
        info = api(url, "GET", "/info", headers={PROTOCOL_HEADER: "3"}).json()
        assert info["protocol"] == 2 and info["protocols"] == [2]
        assert_clean_error(api(url, "GET", f"{V3}/stats"), 404, "NotFound")
        import requests as requests_module

        real_session = requests_module.Session

        class OldInfo(real_session):  # the /info of a server from before protocol 3
            def __init__(self) -> None:
                super().__init__()
                self.hooks["response"].append(_strip_protocols)

        monkeypatch.setattr("SAMVolSegmentLib.remote.client.requests.Session", OldInfo)
        with _pair(url, model, image) as (local, remote):
            assert remote.protocol == 2
            for op, args in (("click", (c, True)), ("click", (c + [3.0, 0.0, 0.0], False)), ("undo", ()),
                             ("redo", ()), ("reset", ())):
                expected, got = _run(local, op, args), _run(remote, op, args)
                assert got.bbox_kji == expected.bbox_kji
                np.testing.assert_array_equal(remote.mask_array_kji(), local.mask_array_kji())
            with pytest.raises(ProtocolMismatchError, match="speaks protocol 2.*this client 3"):
                RemoteSession(url, token=TOKEN, protocol=3)


def test_protocol_2_clients_are_served_as_before(server, model):  # noqa: F811
    image = ct_image(seed=11)
    c = centre_ras(image)
    info = api(server, "GET", "/info", headers={PROTOCOL_HEADER: "2"}).json()
    assert info["protocol"] == 2 and info["protocols"] == [2, 3]  # what a protocol-2 client checks
    with _pair(server, model, image, protocol=2) as (local, remote):
        assert remote.protocol == 2 and remote._prefix == V2
        for op, args in (("click", (c, True)), ("click", (c + [-3.0, 2.0, 0.0], True)), ("undo", ()), ("redo", ())):
            expected, got = _run(local, op, args), _run(remote, op, args)
            assert got.bbox_kji == expected.bbox_kji
            np.testing.assert_array_equal(got.mask, expected.mask)
        np.testing.assert_array_equal(remote.server_mask_array_kji(), local.mask_array_kji())
        # a protocol-2 request to the protocol-3 endpoints (or the reverse) is refused clearly
        body = assert_clean_error(api(server, "GET", f"{V3}/stats", headers={PROTOCOL_HEADER: "2"}), 400,
                                  "ProtocolMismatchError")
        assert "/v3" in body["detail"] and "same SAMVolSegment version" in body["detail"]
