#!/usr/bin/env python3
"""Drives alert-relay through a real Home Assistant (REST API only) and checks what a user
would see. Started by tests/ha/run.sh, which passes everything through the environment:

  HA_URL, HA_LOG        the running Home Assistant and its log file
  RELAY_CMD             shell command that starts the relay (run in the background here)
  RELAY_WEBHOOK, TOKEN  the relay's webhook, to feed alerts
  SIM_TRACE             the sim GPIO trace file
  BROKER_START/STOP     shell commands that start/stop mosquitto
  MQTT_PORT             the broker port (for the config flow)

Prints one line per check ("ok: ..." / "FAIL: ...") and a closing "N passed, N failed".
"""
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request

HA = os.environ["HA_URL"]
RESULTS = {"passed": 0, "failed": 0}
TOKEN = None
relay = None


def http(method, url, body=None, headers=None, form=False):
    data = None
    h = dict(headers or {})
    if body is not None:
        if form:
            data = urllib.parse.urlencode(body).encode()
            h["Content-Type"] = "application/x-www-form-urlencoded"
        else:
            data = json.dumps(body).encode()
            h["Content-Type"] = "application/json"
    if TOKEN:
        h.setdefault("Authorization", f"Bearer {TOKEN}")
    req = urllib.request.Request(url, data=data, headers=h, method=method)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            text = r.read().decode()
            return json.loads(text) if text else None
    except urllib.error.HTTPError as e:  # say what HA refused and why, not only the status
        raise urllib.error.HTTPError(e.url, e.code, f"{e.reason}: {method} {url}: "
                                     f"{e.read().decode(errors='replace')[:500]}", e.headers, None)


def wait(what, cond, timeout=30.0, step=0.25):
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        try:
            last = cond()
            if last:
                return last
        except (urllib.error.URLError, ConnectionError, KeyError, TypeError, ValueError) as e:
            last = e
        time.sleep(step)
    raise TimeoutError(f"{what}: not within {timeout}s (last: {last!r})")


def check(name, ok, detail=""):
    if ok:
        RESULTS["passed"] += 1
        print(f"ok: {name}", flush=True)
    else:
        RESULTS["failed"] += 1
        print(f"FAIL: {name} {detail}", flush=True)


def states():
    return {s["entity_id"]: s for s in http("GET", f"{HA}/api/states")}


def state(eid):
    return http("GET", f"{HA}/api/states/{eid}")


def call(domain, service, **data):
    return http("POST", f"{HA}/api/services/{domain}/{service}", data)


def trace_edges(output):
    """(time, on) edges of `output` in the sim trace."""
    edges = []
    try:
        with open(os.environ["SIM_TRACE"]) as f:
            for line in f:
                try:
                    e = json.loads(line)
                except ValueError:
                    continue
                if e.get("output") == output:
                    edges.append((e["mono_us"], e["on"]))
    except FileNotFoundError:
        pass
    return edges


def post_alert(label, event_id, confidence=0.99):
    body = {
        "event_id": event_id,
        "label": label,
        "confidence": confidence,
        "explanation": "ha proof",
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    req = urllib.request.Request(
        os.environ["RELAY_WEBHOOK"],
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "X-Relay-Token": os.environ["TOKEN"]},
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=15) as r:
        return r.status


def start_relay():
    global relay
    relay = subprocess.Popen(os.environ["RELAY_CMD"], shell=True, start_new_session=True)
    wait("relay webhook up", lambda: relay_up(), timeout=30)


def relay_up():
    try:
        urllib.request.urlopen(os.environ["RELAY_WEBHOOK"].replace("/webhook", "/healthz"), timeout=2)
        return True
    except urllib.error.HTTPError:
        return True


def stop_relay():
    global relay
    if relay is not None:
        os.killpg(relay.pid, 15)
        relay.wait(timeout=30)
        relay = None


def onboard():
    global TOKEN
    client_id = f"{HA}/"
    wait("HA up", lambda: http("GET", f"{HA}/api/onboarding") is not None, timeout=300, step=1)
    r = http("POST", f"{HA}/api/onboarding/users", {
        "client_id": client_id, "name": "CI", "username": "ci", "password": "ci-password-1",
        "language": "en"})
    tok = http("POST", f"{HA}/auth/token", {
        "grant_type": "authorization_code", "code": r["auth_code"], "client_id": client_id},
        form=True)
    TOKEN = tok["access_token"]
    flow = http("POST", f"{HA}/api/config/config_entries/flow", {"handler": "mqtt"})
    if flow.get("type") == "menu":
        flow = http("POST", f"{HA}/api/config/config_entries/flow/{flow['flow_id']}",
                    {"next_step_id": "broker"})
    broker = {"broker": "127.0.0.1", "port": int(os.environ["MQTT_PORT"])}
    # 2026.x puts TLS, transport and client id in a required "other_settings" section.
    if any(f.get("name") == "other_settings" for f in flow.get("data_schema") or []):
        broker["other_settings"] = {"set_client_cert": False, "set_ca_cert": "off",
                                    "transport": "tcp"}
    done = http("POST", f"{HA}/api/config/config_entries/flow/{flow['flow_id']}", broker)
    check("MQTT config flow creates an entry", done.get("type") == "create_entry", str(done))


def find(st, domain, suffix):
    for eid in st:
        if eid.startswith(domain + ".") and eid.endswith(suffix):
            return eid
    return None


def main():
    import urllib.parse  # noqa: F401  (used by http(form=True))
    globals()["urllib"].parse = urllib.parse
    onboard()
    start_relay()
    # Entity ids: 2025.4 derives them from the device and entity names; 2026.x takes the
    # relay's default_entity_id ({platform}.{node}_{object}), so some suffixes have two forms.
    want = {
        ("event", "_alert"): None,
        ("siren", "_horn"): None,
        ("light", "_lamp"): None,
        ("button", "_test_horn"): "identify",
        ("button", "_test_lamp"): "identify",
        ("button", "_silence"): None,
        ("button", ("_snooze_30m", "_snooze")): None,
        ("switch", "_rule_porch"): None,
        ("sensor", "_silenced_until"): "timestamp",
        ("binary_sensor", ("_alert_source", "_source")): "connectivity",
        ("binary_sensor", "_output_horn"): "running",
        ("sensor", "_queue_depth"): None,
        ("sensor", ("_alerts_received", "_received")): None,
        ("sensor", ("_alerts_dropped", "_dropped")): None,
        ("sensor", ("_alerts_set_aside", "_set_aside")): None,
    }
    st = wait("every entity in HA",
              lambda: (lambda s: s if all(find(s, d, x) for d, x in want) else None)(states()),
              timeout=60)
    ids = {}
    for (domain, suffix), dc in want.items():
        eid = find(st, domain, suffix)
        ids[(domain, suffix)] = eid
        got = st[eid]["attributes"].get("device_class")
        check(f"{eid} exists" + (f" with device_class {dc}" if dc else ""), dc is None or got == dc,
              f"device_class={got!r}")
    siren, light, rule = ids[("siren", "_horn")], ids[("light", "_lamp")], ids[("switch", "_rule_porch")]
    event = ids[("event", "_alert")]
    check("siren offers the named tones",
          set(st[siren]["attributes"].get("available_tones") or []) >= {"alarm", "chirp"},
          str(st[siren]["attributes"]))
    check("light offers the named patterns as effects",
          set(st[light]["attributes"].get("effect_list") or []) >= {"alarm", "chirp"},
          str(st[light]["attributes"]))
    wait("relay entities available", lambda: state(siren)["state"] in ("on", "off"))

    # siren.turn_on with a duration and a tone drives the buzzer.
    before = len(trace_edges("horn"))
    call("siren", "turn_on", entity_id=siren, duration=1, tone="chirp")
    wait("siren on in HA", lambda: state(siren)["state"] == "on", timeout=10)
    wait("horn edges in the sim trace", lambda: len(trace_edges("horn")) >= before + 2, timeout=10)
    check("siren.turn_on(duration=1, tone=chirp) drives the buzzer",
          len(trace_edges("horn")) >= before + 2)
    wait("siren off again after its duration", lambda: state(siren)["state"] == "off", timeout=10)
    check("siren turns off after its duration", True)

    # light.turn_on with an effect drives the light.
    before = len(trace_edges("lamp"))
    call("light", "turn_on", entity_id=light, effect="alarm")
    wait("light on in HA", lambda: state(light)["state"] == "on", timeout=10)
    check("light shows the effect", state(light)["attributes"].get("effect") == "alarm",
          str(state(light)["attributes"]))
    wait("lamp edges", lambda: len(trace_edges("lamp")) >= before + 2, timeout=10)
    check("light.turn_on(effect=alarm) drives the light", True)
    call("light", "turn_off", entity_id=light)
    wait("light off", lambda: state(light)["state"] == "off", timeout=10)
    check("light.turn_off stops it", True)

    # The event entity fires for a live alert.
    post_alert("person", "ev-1")
    wait("event entity fired",
         lambda: state(event)["attributes"].get("event_id") == "ev-1", timeout=15)
    check("a live alert fires the event entity with its label",
          state(event)["attributes"].get("event_type") == "person", str(state(event)["attributes"]))

    # The rule fires the lamp; disarmed it does not, also after a relay restart.
    wait("rule switch on", lambda: state(rule)["state"] == "on")
    before = len(trace_edges("lamp"))
    post_alert("person", "ev-2")
    wait("armed rule fires the lamp", lambda: len(trace_edges("lamp")) >= before + 1, timeout=10)
    check("an armed rule fires", True)
    call("switch", "turn_off", entity_id=rule)
    wait("rule switch off", lambda: state(rule)["state"] == "off", timeout=10)
    time.sleep(1.5)  # let the lamp's 1 s rule pattern end before counting
    before = len(trace_edges("lamp"))
    post_alert("person", "ev-3")
    time.sleep(2)
    check("a disarmed rule does not fire", len(trace_edges("lamp")) == before,
          f"{len(trace_edges('lamp')) - before} new lamp edges")
    stop_relay()
    start_relay()
    wait("relay back", lambda: state(rule)["state"] in ("on", "off"), timeout=30)
    check("the rule stays disarmed after a relay restart (HA switch)", state(rule)["state"] == "off")
    before = len(trace_edges("lamp"))
    post_alert("person", "ev-4")
    time.sleep(2)
    check("...and still does not fire", len(trace_edges("lamp")) == before)
    call("switch", "turn_on", entity_id=rule)
    wait("rule switch on again", lambda: state(rule)["state"] == "on", timeout=10)

    # Snooze silences and shows until when.
    snooze = ids[("button", ("_snooze_30m", "_snooze"))]
    until_e = ids[("sensor", "_silenced_until")]
    call("button", "press", entity_id=snooze)
    until = wait("silenced until shown", lambda: (lambda v: v if v not in ("unknown", "unavailable", None) else None)(state(until_e)["state"]), timeout=10)
    check("snooze shows until when", "T" in until, until)
    before = len(trace_edges("lamp")) + len(trace_edges("horn"))
    post_alert("person", "ev-5")
    time.sleep(2)
    check("nothing sounds or lights while snoozed",
          len(trace_edges("lamp")) + len(trace_edges("horn")) == before)
    # End the snooze through the REST API too (mqtt.publish is a HA service).
    call("mqtt", "publish", topic="ar-ci/cmd/snooze", payload='{"for": "0s"}')
    wait("snooze cleared", lambda: state(until_e)["state"] in ("unknown",), timeout=10)
    check("ending the snooze clears until", True)

    # A replayed backlog does not change the event entity.
    ev_state = state(event)
    subprocess.run(os.environ["BROKER_STOP"], shell=True, check=True)
    for i in range(5):
        post_alert("person", f"backlog-{i}")
    stop_relay()
    subprocess.run(os.environ["BROKER_START"], shell=True, check=True)
    start_relay()
    recv = ids[("sensor", "_queue_depth")]
    wait("backlog drained", lambda: state(recv)["state"] == "0", timeout=30)
    time.sleep(2)
    after = state(event)
    check("a replayed backlog does not change the event entity",
          after["state"] == ev_state["state"], f"{ev_state['state']} -> {after['state']}")

    # A new label becomes an event type.
    post_alert("raccoon", "ev-new-label")
    wait("raccoon is an event type",
         lambda: "raccoon" in (state(event)["attributes"].get("event_types") or []), timeout=20)
    check("a new label becomes an event type", True)
    # The alert that brought the new label fires as its own type: the relay holds events
    # until HA has applied the discovery announcing it (no first-alert gap).
    wait("the first raccoon event",
         lambda: state(event)["attributes"].get("event_id") == "ev-new-label", timeout=15)
    check("the alert that brings a new label fires as its own type",
          state(event)["attributes"].get("event_type") == "raccoon", str(state(event)["attributes"]))
    post_alert("raccoon", "ev-new-label-2")
    wait("the second raccoon event",
         lambda: state(event)["attributes"].get("event_id") == "ev-new-label-2", timeout=15)
    check("the next alert of that label fires as its own type",
          state(event)["attributes"].get("event_type") == "raccoon", str(state(event)["attributes"]))

    stop_relay()
    # HA logs no warning about the relay.
    with open(os.environ["HA_LOG"]) as f:
        # HA's own client warns when the broker goes away: this run stops it on purpose.
        bad = [l.rstrip() for l in f if ("WARNING" in l or "ERROR" in l)
               and ("mqtt" in l.lower() or "ar-ci" in l or "alert" in l.lower())
               and "Error returned from MQTT server: The connection was lost" not in l]
    for l in bad[:20]:
        print("  HA log:", l)
    check("HA logs no warning about the relay", not bad, f"{len(bad)} lines")


if __name__ == "__main__":
    try:
        main()
    except Exception as e:  # a step that timed out is a failure, with what it waited for
        RESULTS["failed"] += 1
        print(f"FAIL: {e}", flush=True)
    finally:
        try:
            stop_relay()
        except Exception:
            pass
    print(f"{RESULTS['passed']} passed, {RESULTS['failed']} failed")
    sys.exit(1 if RESULTS["failed"] else 0)
