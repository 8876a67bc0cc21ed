"""Drives the VideoDB stand-in (examples/videodb_standin.rs) through VideoDB's own Python SDK.

Run by .ci/videodb-sdk.sh:  python conformance.py API_URL KEY
The stand-in must run with `--hello typed --v2-index rts-1/idx-v2`.

If the SDK and the relay both work against the same strict stand-in, they speak the same
protocol: every SDK call the relay mirrors is made here, and every answer is checked the way
the SDK reads it. Exit status 0 = conforms; any failure raises with the step that broke.
"""

import asyncio
import importlib.metadata
import json
import sys

import requests
import videodb
from videodb.exceptions import InvalidRequestError

API_URL, KEY = sys.argv[1], sys.argv[2]
RT, V1, V2 = "rts-1", "scn-v1", "idx-v2"
STEP_TIMEOUT = 20


def step(name):
    print(f"conformance: {name}", flush=True)


def send_frame(**frame):
    """Test control of the stand-in: one frame on the newest socket."""
    r = requests.post(
        f"{API_URL}/_standin/send",
        json=frame,
        headers={"x-access-token": KEY},
        timeout=STEP_TIMEOUT,
    )
    assert r.status_code == 200, f"_standin/send: HTTP {r.status_code} {r.text}"


def expect_rejected(what, call, status, needle):
    try:
        call()
    except InvalidRequestError as e:
        assert e.response is not None and e.response.status_code == status, (
            f"{what}: expected HTTP {status}, got {e.response and e.response.status_code}"
        )
        assert needle in str(e), f"{what}: message {str(e)!r} lacks {needle!r}"
        return
    raise AssertionError(f"{what}: the stand-in accepted it")


async def main():
    step(f"videodb {importlib.metadata.version('videodb')} against {API_URL}")
    conn = videodb.connect(api_key=KEY, base_url=API_URL)

    step("create_event / list_events")
    event_id = conn.create_event(event_prompt="a person at the door", label="intrusion")
    assert event_id, "create_event returned no event_id"
    events = conn.list_events()
    assert any(e.get("event_id") == event_id and e.get("label") == "intrusion" for e in events), events

    step("connect_websocket + connect: the typed first frame gives the connection id")
    ws = conn.connect_websocket()
    await asyncio.wait_for(ws.connect(), STEP_TIMEOUT)
    cid = ws.connection_id
    assert isinstance(cid, str) and cid, f"no connection_id from the first frame: {cid!r}"

    step("get_rtstream, get_scene_index (v1) and get_index (v2): the relay's kind lookups")
    rts = conn.get_collection().get_rtstream(RT)
    v1 = rts.get_scene_index(V1)
    assert v1.rtstream_index_id == V1, v1
    v2 = rts.get_index(V2)
    assert v2 is not None and v2.id == V2, v2
    expect_rejected("v2 lookup of a v1 index", lambda: rts.get_index(V1), 404, "not found")
    expect_rejected("v1 lookup of a v2 index", lambda: rts.get_scene_index(V2), 404, "not found")

    step("create_alert on a v1 and a v2 index (callback_url \"\" and None)")
    a1 = v1.create_alert(event_id, callback_url="", ws_connection_id=cid)
    a2 = v2.create_alert(event_id, callback_url=None, ws_connection_id=cid)
    assert a1 and a2 and a1 != a2, (a1, a2)

    step("the stand-in is strict: no callback_url is a 400 with success false + message")
    for seg, idx in (("index", V1), ("indexes", V2)):
        expect_rejected(
            f"create without callback_url on {seg}",
            lambda: conn.post(f"rtstream/{RT}/{seg}/{idx}/alert", data={"event_id": event_id}),
            400,
            "callback_url is required",
        )

    step("list_alerts, disable_alert, enable_alert on both kinds")
    for index, alert_id in ((v1, a1), (v2, a2)):
        def status():
            listed = {a["alert_id"]: a for a in index.list_alerts()}
            assert alert_id in listed, listed
            a = listed[alert_id]
            assert a["event_id"] == event_id and a["label"] == "intrusion", a
            return a["status"]

        assert status() == "enabled"
        index.disable_alert(alert_id)
        assert status() == "disabled"
        index.enable_alert(alert_id)
        assert status() == "enabled"

    step("receive: an alert, a binary JSON frame, a non-JSON frame")
    alert = {"channel": "alert", "rtstream_id": RT,
             "data": {"event_label": "intrusion", "timestamp": 1767225600000, "text": "a person"}}
    send_frame(text=json.dumps(alert))
    binary = {"event": "capture_session.active", "capture_session_id": "cs-1"}
    send_frame(binary=json.dumps(binary))
    send_frame(text="keepalive, not JSON")
    got = []

    async def take(n):
        async for m in ws.receive():
            got.append(m)
            if len(got) == n:
                return

    await asyncio.wait_for(take(3), STEP_TIMEOUT)
    assert got[0] == alert, got[0]
    assert got[1] == binary, f"binary JSON frame not parsed as JSON: {got[1]!r}"
    assert got[2] == {"raw": "keepalive, not JSON"}, got[2]
    await ws.close()
    step("OK: the SDK and the stand-in agree")


asyncio.run(main())
