// Small display helpers shared by the live captions and the file transcript.

const languageNames = typeof Intl.DisplayNames === "function" ? new Intl.DisplayNames(["en"], { type: "language" }) : null;

export function formatClock(seconds) {
  if (typeof seconds !== "number" || !Number.isFinite(seconds)) return "";
  const minutes = Math.floor(seconds / 60);
  const rest = seconds - minutes * 60;
  return `${String(minutes).padStart(2, "0")}:${rest.toFixed(1).padStart(4, "0")}`;
}

export function languageLabel(code) {
  if (!code) return "–";
  try {
    return languageNames ? `${languageNames.of(code)} (${code})` : code;
  } catch {
    return code;
  }
}

/** "SPEAKER_01" -> "Speaker 2"; unknown -> "?". */
export function speakerName(label) {
  const match = /^SPEAKER_(\d+)$/.exec(label || "");
  return match ? `Speaker ${Number(match[1]) + 1}` : label || "?";
}

export function finalItem(final) {
  const item = document.createElement("li");
  if (typeof final.seq === "number") item.dataset.seq = String(final.seq);
  const time = document.createElement("span");
  time.className = "when";
  time.textContent = `${formatClock(final.start)}–${formatClock(final.end)}`;
  const text = document.createElement("span");
  text.className = "text";
  text.textContent = (final.text || "").trim();
  item.append(time, " ");
  // A diarized final names its speaker; `null` there means not known yet (shown as "?").
  if (final.diarized || final.speaker) {
    const who = document.createElement("span");
    who.className = "speaker";
    who.textContent = speakerName(final.speaker);
    if (final.speaker) who.dataset.speaker = final.speaker;
    item.append(who, " ");
  }
  item.append(text);
  return item;
}
