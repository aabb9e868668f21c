// The policy editor, progressively enhanced (templates/governance/policy_edit.html). The server draws the same chips
// (governance/policy_review.py) and checks everything again on the review step: the page works without this file.
// - Allowed tools, Blocked tools and Require approval for: each line redrawn as a chip while typing, checked against
//   the account's known tools (#known-tools): a known name, an unknown one (amber), a glob with what it matches.
// - "Only allow the tools listed below" with an empty list: a hint to tick "Block every tool (deny all)".
// - A number field holding something that is not a number (the browser would send it empty, clearing the cap):
//   the save is stopped and the field says so.
(() => {
  const form = document.querySelector("[data-policy-editor]");
  const data = document.getElementById("known-tools");
  if (!form || !data) return;
  const SHOWN = 8; // tools named per glob
  const MAX_LIST = 500; // entries of a list (policies.MAX_LIST)
  const GLOBS = 100; // globs previewed per list
  const normalise = (name) => name.normalize("NFKC").toLowerCase().trim(); // identifiers.normalise_tool, near enough
  const known = new Map();
  for (const name of JSON.parse(data.textContent)) {
    const key = normalise(name);
    if (!known.has(key)) known.set(key, name);
  }
  const isGlob = (entry) => /[*?[]/.test(entry);

  // fnmatch.translate: * any run, ? one character, [seq] / [!seq] a set, anything else itself; the whole name.
  function globRegex(pattern) {
    let out = "";
    for (let i = 0; i < pattern.length; i++) {
      const c = pattern[i];
      if (c === "*") out += "[\\s\\S]*";
      else if (c === "?") out += "[\\s\\S]";
      else if (c === "[") {
        let j = i + 1;
        if (pattern[j] === "!") j++;
        if (pattern[j] === "]") j++;
        while (j < pattern.length && pattern[j] !== "]") j++;
        if (j >= pattern.length) {
          out += "\\[";
        } else {
          let body = pattern.slice(i + 1, j).replace(/\\/g, "\\\\");
          if (body[0] === "!") body = `^${body.slice(1)}`;
          else if (body[0] === "^") body = `\\${body}`;
          out += `[${body}]`;
          i = j;
        }
      } else {
        out += c.replace(/[.*+?^${}()|[\]\\/]/g, "\\$&");
      }
    }
    try {
      return new RegExp(`^(?:${out})$`);
    } catch (err) {
      return null;
    }
  }

  function check(entry, preview) {
    if (!isGlob(entry)) {
      return known.has(normalise(entry))
        ? { kind: "known", note: "known tool" }
        : { kind: "unknown", note: "unknown tool: not registered, never called" };
    }
    const regex = preview ? globRegex(normalise(entry)) : null;
    if (!regex) return { kind: "glob", note: "glob (not previewed)" };
    const matched = [];
    for (const [key, name] of known) if (regex.test(key)) matched.push(name);
    if (!matched.length) return { kind: "glob-none", note: "matches no known tool" };
    const more = matched.length - SHOWN;
    return { kind: "glob", note: `matches ${matched.slice(0, SHOWN).join(", ")}${more > 0 ? ` and ${more} more` : ""}` };
  }

  const lines = (textarea) =>
    textarea.value.split("\n").map((line) => line.trim()).filter(Boolean).slice(0, MAX_LIST);

  function draw(textarea, list) {
    const field = textarea.dataset.toolList;
    const entries = lines(textarea);
    const chips = [];
    let globs = 0;
    for (const line of entries) {
      let entry = line;
      if (field === "require_approval") {
        const threshold = line.match(/^(\S+)\s+(?:>|over)\s+\$?(\S+)$/);
        if (threshold) entry = threshold[1];
      }
      if (isGlob(entry)) globs++;
      const { kind, note } = check(entry, globs <= GLOBS);
      const chip = document.createElement("li");
      chip.className = `chip chip-${kind}`;
      chip.dataset.kind = kind;
      const name = document.createElement("span");
      name.className = "mono";
      name.textContent = line;
      const said = document.createElement("span");
      if (kind === "unknown" || kind === "glob-none") said.className = "badge badge-warn";
      else if (kind === "known") said.className = "badge badge-muted";
      else said.className = "muted";
      said.textContent = note;
      chip.append(name, " ", said);
      chips.push(chip);
    }
    list.replaceChildren(...chips);
    list.hidden = chips.length === 0;
  }

  for (const textarea of form.querySelectorAll("textarea[data-tool-list]")) {
    const list = form.querySelector(`[data-chips-for="${textarea.id}"]`);
    if (!list) continue;
    let timer = null;
    textarea.addEventListener("input", () => {
      clearTimeout(timer);
      timer = setTimeout(() => draw(textarea, list), 150);
    });
  }

  const restrict = form.querySelector('[name="restrict_tools"]');
  const denyAll = form.querySelector('[name="deny_all"]');
  const allowed = form.querySelector('textarea[name="allowed_tools"]');
  const hint = form.querySelector("[data-deny-all-hint]");
  function hintDenyAll() {
    if (!restrict || !denyAll || !allowed || !hint) return;
    hint.hidden = !(restrict.checked && !denyAll.checked && lines(allowed).length === 0);
  }
  for (const el of [restrict, denyAll, allowed]) if (el) el.addEventListener("input", hintDenyAll);
  for (const el of [restrict, denyAll]) if (el) el.addEventListener("change", hintDenyAll);
  hintDenyAll();

  form.addEventListener("submit", (event) => {
    let first = null;
    for (const input of form.querySelectorAll('input[type="number"]')) {
      let note = input.parentElement.querySelector("[data-number-error]");
      if (input.validity.badInput) {
        if (!note) {
          note = document.createElement("p");
          note.className = "field-error";
          note.setAttribute("role", "alert");
          note.dataset.numberError = "";
          input.insertAdjacentElement("afterend", note);
        }
        note.textContent = "Not a number: write it in digits 0–9 (with a point for decimals), or empty it for no limit.";
        first = first || input;
      } else if (note) {
        note.remove();
      }
    }
    if (first) {
      event.preventDefault();
      first.focus();
    }
  });
})();
