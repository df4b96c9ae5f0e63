// The call page's debug panel: the floor as the server sees it, the latest perception reading, and the
// response latency of each replica turn (its speaking start minus the user's preceding speech end, both on
// the session clock) with the breakdown the server reports.

const FLOOR = {
  speech_start: () => "user speaking",
  speech_end: () => "user paused",
  eot_tentative: (e) => `end of turn? (tentative${e.p_yield != null ? `, p ${e.p_yield.toFixed(2)}` : ""})`,
  eot_cancel: () => "user continues (tentative end cancelled)",
  eot_commit: (e) => `replica's turn${e.reason ? ` (${e.reason})` : ""}`,
  barge_in: () => "user barged in",
};
const FLOOR_TYPES = new Set([...Object.keys(FLOOR), "backchannel"]);
const LOG = 12; // floor events listed
const ROWS = 50; // latency rows kept

const ms = (v) => (v == null || Number.isNaN(v) ? "–" : String(Math.round(v)));

export class DebugPanel {
  constructor(root) {
    this.floor = root.querySelector("#floor-state");
    this.replica = root.querySelector("#replica-state");
    this.log = root.querySelector("#floor-log");
    this.perception = root.querySelector("#perception");
    this.latency = root.querySelector("#latency tbody");
    this.notice = root.querySelector("#last-error");
  }

  onEvent(ev) {
    if (FLOOR_TYPES.has(ev.type)) {
      if (FLOOR[ev.type]) this.floor.textContent = FLOOR[ev.type](ev);
      const li = document.createElement("li");
      const extra = ev.type === "backchannel" && ev.duration_ms != null ? ` ${ms(ev.duration_ms)} ms` : "";
      li.textContent = `${fmtT(ev.t)}  ${ev.type}${extra}`;
      this.log.prepend(li);
      while (this.log.childElementCount > LOG) this.log.lastElementChild.remove();
      return;
    }
    switch (ev.type) {
      case "replica_speaking_start":
        this.replica.textContent = `speaking (reply ${ev.reply_id}${ev.from_speculation ? ", speculative" : ""})`;
        break;
      case "replica_speaking_stop":
        this.replica.textContent = ev.interrupted ? "quiet (interrupted)" : "quiet";
        break;
      case "perception":
        this.showPerception(ev);
        break;
      case "error":
        this.notice.textContent = `${fmtT(ev.t)}  ${ev.code}: ${ev.message}${ev.fatal ? " (fatal)" : ""}`;
        break;
      default:
    }
  }

  showPerception(ev) {
    const top = ev.emotion
      ? Object.entries(ev.emotion)
          .sort((a, b) => b[1] - a[1])
          .slice(0, 2)
          .map(([name, p]) => `${name} ${p.toFixed(2)}`)
          .join(", ")
      : "–";
    const rows = [
      ["at", `${fmtT(ev.t)} (${ev.modality || "?"}, ${ms(ev.latency_ms)} ms)`],
      ["emotion", top],
      ["gaze", ev.gaze ?? "–"],
      ["reads", ev.text || "–"],
    ];
    this.perception.replaceChildren(
      ...rows.flatMap(([k, v]) => {
        const dt = document.createElement("dt");
        dt.textContent = k;
        const dd = document.createElement("dd");
        dd.textContent = v;
        return [dt, dd];
      }),
    );
  }

  // row: {reply_id, response_ms, from_speculation, latency}
  addLatency(row) {
    const l = row.latency || {};
    const tr = document.createElement("tr");
    for (const v of [
      row.reply_id,
      ms(row.response_ms),
      row.from_speculation ? "yes" : "no",
      ms(l.asr_final_ms),
      ms(l.llm_first_token_ms),
      ms(l.tts_first_chunk_ms),
      ms(l.floor_ms),
    ]) {
      const td = document.createElement("td");
      td.textContent = String(v);
      tr.append(td);
    }
    this.latency.prepend(tr);
    while (this.latency.childElementCount > ROWS) this.latency.lastElementChild.remove();
  }
}

function fmtT(t) {
  return typeof t === "number" ? `${t.toFixed(2)} s` : "";
}
