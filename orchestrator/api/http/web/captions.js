// Live captions of both sides, from the session's events: the user's open turn follows `transcript`
// (partial, then final) and is settled by `user_turn`; a replica reply grows one clause at a time with
// `replica_caption` and is settled by `replica_speaking_stop` / `replica_turn`, marked when interrupted.

const KEEP = 60; // caption lines kept on the page

export class Captions {
  constructor(el) {
    this.el = el;
    this.user = null; // the user's open turn
    this.replies = new Map(); // reply_id → its line
  }

  line(who) {
    const p = document.createElement("p");
    p.className = `caption ${who}`;
    const label = document.createElement("span");
    label.className = "who";
    label.textContent = who === "user" ? "You" : "Replica";
    const text = document.createElement("span");
    text.className = "text";
    p.append(label, " ", text);
    this.el.append(p);
    while (this.el.childElementCount > KEEP) this.el.firstElementChild.remove();
    return p;
  }

  show(p, text) {
    p.querySelector(".text").textContent = text;
    this.el.scrollTop = this.el.scrollHeight;
  }

  settle(p, interrupted) {
    p.classList.remove("partial");
    if (interrupted && !p.classList.contains("interrupted")) {
      p.classList.add("interrupted");
      const mark = document.createElement("span");
      mark.className = "mark";
      mark.textContent = "interrupted";
      p.append(" ", mark);
    }
  }

  onEvent(ev) {
    switch (ev.type) {
      case "transcript": {
        if (!ev.text) return;
        this.user ??= this.line("user");
        this.user.classList.toggle("partial", !ev.final);
        this.show(this.user, ev.text);
        break;
      }
      case "user_turn": {
        if (!this.user && !ev.text) return;
        this.user ??= this.line("user");
        if (ev.text) this.show(this.user, ev.text);
        this.settle(this.user, false);
        this.user = null;
        break;
      }
      case "replica_caption": {
        if (!ev.text) return;
        let p = this.replies.get(ev.reply_id);
        if (!p) {
          p = this.line("replica");
          p.classList.add("partial");
          this.replies.set(ev.reply_id, p);
        }
        const said = p.querySelector(".text").textContent;
        this.show(p, said ? `${said} ${ev.text.trim()}` : ev.text.trim());
        break;
      }
      case "replica_speaking_stop": {
        const p = this.replies.get(ev.reply_id);
        if (p) this.settle(p, ev.interrupted);
        break;
      }
      case "replica_turn": {
        let p = this.replies.get(ev.reply_id);
        if (!p && !ev.text) return;
        p ??= this.line("replica");
        if (ev.text) this.show(p, ev.text); // what was heard
        this.settle(p, ev.interrupted);
        this.replies.delete(ev.reply_id);
        break;
      }
      default:
    }
  }
}
