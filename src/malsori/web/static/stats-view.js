// The live page's statistics beside the captions: figures from each `stats` event of /v1/stream
// (docs/protocol.md, "Statistics and meetings") and two small SVG charts, words per minute over the
// session and the sentiment trend. Plain SVG: no chart library.

const SVG = "http://www.w3.org/2000/svg";
const POINTS = 60; // the newest stats events the words-per-minute chart shows

/**
 * Draw `values` as a line in `svg` (its viewBox is the drawing area), between `min` and `max`.
 * Returns the number of points drawn.
 */
export function drawLine(svg, values, min, max) {
  const [, , width, height] = svg.getAttribute("viewBox").split(/\s+/).map(Number);
  let line = svg.querySelector("polyline");
  if (!line) {
    line = document.createElementNS(SVG, "polyline");
    svg.append(line);
  }
  const span = max - min || 1;
  const step = values.length > 1 ? width / (values.length - 1) : 0;
  const points = values.map((v, i) => {
    const y = height - ((Math.min(max, Math.max(min, v)) - min) / span) * height;
    return `${(i * step).toFixed(1)},${y.toFixed(1)}`;
  });
  line.setAttribute("points", points.join(" "));
  return points.length;
}

const percent = (x) => `${Math.round(x * 100)}%`;
const seconds = (s) => (s >= 60 ? `${Math.floor(s / 60)} min ${Math.round(s % 60)} s` : `${s.toFixed(1)} s`);

export class StatsView {
  /** @param {(id: string) => HTMLElement} $ */
  constructor($) {
    this.$ = $;
    this.wpm = [];
    this.count = 0;
  }

  reset(meetingId) {
    const $ = this.$;
    this.wpm = [];
    this.count = 0;
    for (const id of ["st-wpm", "st-speaking", "st-silence", "st-latency", "st-sentiment"]) $(id).textContent = "–";
    $("st-wpm-chart").replaceChildren();
    $("st-trend-chart").replaceChildren();
    $("st-trend-box").hidden = true;
    $("st-speakers").replaceChildren();
    $("st-speakers-box").hidden = true;
    const meeting = $("st-meeting");
    meeting.hidden = !meetingId;
    if (meetingId) {
      const link = $("st-meeting-link");
      link.textContent = meetingId;
      link.href = `/v1/meetings/${encodeURIComponent(meetingId)}`;
    }
  }

  /** Show one `stats` event (the session's figures; the meeting's when it has more sessions). */
  show(event) {
    const $ = this.$;
    const stats = event.stats;
    this.count += 1;
    $("stats").dataset.updates = String(this.count);
    $("st-wpm").textContent = stats.words ? String(Math.round(stats.wpm)) : "–";
    $("st-speaking").textContent = seconds(stats.speaking_s);
    $("st-silence").textContent = stats.audio_s > 0 ? percent(stats.silence_ratio) : "–";
    if (stats.latency) $("st-latency").textContent = `${(stats.latency.p50_ms / 1000).toFixed(2)} s`;

    if (stats.words) {
      this.wpm.push(stats.wpm);
      if (this.wpm.length > POINTS) this.wpm.shift();
      const top = Math.max(200, ...this.wpm);
      drawLine($("st-wpm-chart"), this.wpm, 0, top);
    }

    const sentiment = stats.sentiment;
    if (sentiment) {
      const mean = sentiment.mean >= 0 ? `+${sentiment.mean.toFixed(2)}` : sentiment.mean.toFixed(2);
      $("st-sentiment").textContent =
        `${mean} · ${percent(sentiment.mix.positive)} positive, ${percent(sentiment.mix.negative)} negative`;
      $("st-trend-box").hidden = false;
      drawLine($("st-trend-chart"), sentiment.trend.map((p) => p[1]), -1, 1);
    }

    const speakers = (event.meeting && event.meeting.speakers) || stats.speakers;
    if (speakers && Object.keys(speakers).length) {
      $("st-speakers-box").hidden = false;
      $("st-speakers").replaceChildren(
        ...Object.entries(speakers).map(([name, s]) => {
          const row = document.createElement("li");
          row.dataset.speaker = name;
          const label = document.createElement("span");
          label.textContent = `${name.replace(/SPEAKER_0*(\d+)/, (_, n) => `Speaker ${Number(n) + 1}`)} · ${Math.round(s.wpm)} wpm`;
          const bar = document.createElement("span");
          bar.className = "bar";
          bar.style.width = percent(s.share);
          bar.title = `${percent(s.share)} of the speaking time`;
          row.append(label, bar);
          return row;
        }),
      );
    }
  }
}
