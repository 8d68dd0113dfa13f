#!/usr/bin/python3
# image-builder bake finisher: report the provisioning result, seal, power off.
#
# Usage: seal-finisher.py CONFIG. CONFIG is a JSON file (provision's FinisherConfig)
# naming every path this script reads or writes, the report URL and the power-off
# command. The report it writes is provision's SealReport.
import json, os, subprocess, sys, time, urllib.request


def read(path, default=None):
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return default


def console(cfg, text):
    for dev in cfg["consoles"]:
        try:
            with open(dev, "w") as f:
                f.write(text + "\n")
            return
        except OSError:
            continue
    print(text)


def command_output(argv):
    try:
        out = subprocess.run(argv, capture_output=True, text=True)
    except OSError:
        return ""
    return (out.stdout or out.stderr).strip()


def build_report(cfg):
    run = cfg["run_dir"]
    result = None
    raw = read(cfg["cloud_init_result"])
    if raw:
        try:
            result = json.loads(raw).get("v1", {})
        except ValueError:
            result = None
    errors = [str(e) for e in (result or {}).get("errors") or []]
    failed_step = (read(os.path.join(run, "failed-step")) or "").strip() or None
    steps = []
    for line in (read(os.path.join(run, "steps.tsv")) or "").splitlines():
        parts = line.split("\t")
        if len(parts) == 3:
            steps.append({"name": parts[0], "exit_code": int(parts[1]), "seconds": int(parts[2])})
    tail = (read(cfg["cloud_init_log"]) or "").splitlines()[-60:]
    status = "ok"
    reason = None
    if result is None:
        status, reason = "failed", "cloud-init did not finish (no %s)" % cfg["cloud_init_result"]
    elif failed_step:
        status, reason = "failed", "step %s failed" % failed_step
    elif errors:
        status, reason = "failed", "cloud-init reported errors: %s" % "; ".join(errors)
    elif not os.path.exists(os.path.join(run, "done")):
        status, reason = "failed", "provisioning steps did not run to the end"
    os_release = dict(
        l.split("=", 1) for l in (read(cfg["os_release"]) or "").splitlines() if "=" in l
    )
    return {
        "version": cfg["report_version"],
        "status": status,
        "reason": reason,
        "failed_step": failed_step,
        "cloud_init_errors": errors,
        "steps": steps,
        "log_tail": tail,
        "versions": {
            "cloud_init": command_output(["cloud-init", "--version"]),
            "kernel": os.uname().release,
            "os": os_release.get("PRETTY_NAME", "").strip('"'),
        },
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def seal(cfg, report):
    baked_path = cfg["baked_info_path"]
    baked = dict(cfg["baked_info"], baked_at=report["finished_at"])
    os.makedirs(os.path.dirname(baked_path), exist_ok=True)
    with open(baked_path + ".tmp", "w") as f:
        json.dump(baked, f, indent=1, sort_keys=True)
        f.write("\n")
    os.replace(baked_path + ".tmp", baked_path)
    done = subprocess.run(["sh", "-eu", cfg["seal_script"]], capture_output=True, text=True)
    if done.returncode != 0:
        report["status"] = "failed"
        report["failed_step"] = "seal"
        report["reason"] = "the seal step failed (exit %d)" % done.returncode
        report["log_tail"] = (done.stdout + done.stderr).splitlines()[-60:]


def upload(cfg, body):
    url = cfg["report_url"]
    for attempt in range(1, 6):
        try:
            req = urllib.request.Request(url, data=body.encode(), method="PUT",
                                         headers={"Content-Type": "application/json"})
            urllib.request.urlopen(req, timeout=30).read()
            return
        except Exception as e:
            console(cfg, "image-builder: report upload failed (attempt %d/5): %s" % (attempt, e))
            time.sleep(2 * attempt)


def main():
    config_path = sys.argv[1]
    with open(config_path) as f:
        cfg = json.load(f)
    report = build_report(cfg)
    if report["status"] == "ok":
        seal(cfg, report)
    body = json.dumps(report, sort_keys=True)
    os.makedirs(cfg["run_dir"], exist_ok=True)
    with open(os.path.join(cfg["run_dir"], "seal-report.json"), "w") as f:
        f.write(body + "\n")
    console(cfg, cfg["report_begin"] + "\n" + body + "\n" + cfg["report_end"])
    if cfg["report_url"]:
        upload(cfg, body)
    # The config holds the presigned report URL; on success the seal removed both already.
    for path in (os.path.abspath(__file__), config_path):
        try:
            os.remove(path)
        except OSError:
            pass
    os.sync()
    if cfg["poweroff"]:
        subprocess.run(cfg["poweroff"])


main()
