// Step charts on uPlot (canvas: thousands of points redraw in a frame, so a long job's history stays cheap).
// x is the optimizer step. A stacked chart draws running totals, each filled down to zero over the one below.
import uPlot from './vendor/uPlot.esm.js';

const HEIGHT_PX = 220;

export const COLORS = {
  train: '#2f6db5',
  eval: '#e0772b',
  tokens: '#3b8f5a',
  compute: '#2f6db5',
  allreduce: '#e0a12b',
  bubble: '#d1495b',
  wait: '#9aa3ad',
};

export class StepChart {
  #plot;
  #stacked;
  #resize;
  #container;

  /**
   * series: [{label, color, points?, dash?}] (points: draw a dot per value, for sparse series such as held-out loss);
   * stacked: parts of one whole, in order from the bottom.
   */
  constructor(container, { series, yLabel, stacked = false }) {
    this.#container = container;
    this.#stacked = stacked;
    const drawn = stacked ? [...series].reverse() : series; // uPlot draws in order: the tallest total first
    const opts = {
      width: Math.max(300, container.clientWidth),
      height: HEIGHT_PX,
      scales: { x: { time: false } },
      axes: [{ label: 'step' }, { label: yLabel, size: 60 }],
      // A stacked chart's legend would list its parts top first; the page draws its own in reading order.
      legend: { show: !stacked },
      cursor: { drag: { x: true, y: false } },
      series: [
        { label: 'step' },
        ...drawn.map((s) => ({
          label: s.label,
          stroke: s.color,
          width: 1.5,
          spanGaps: true,
          fill: stacked ? s.color : undefined,
          points: { show: s.points ?? false, size: 6 },
          dash: s.dash, // e.g. [4, 4]: a second series of the same run (held-out beside train loss)
          value: (_u, v) => fmt(v),
        })),
      ],
    };
    this.#plot = new uPlot(opts, [[], ...drawn.map(() => [])], container);
    this.#resize = new ResizeObserver(() => this.#plot.setSize({ width: Math.max(300, container.clientWidth), height: HEIGHT_PX }));
    this.#resize.observe(container);
  }

  /** steps: x values ascending; columns: one array per series (as given to the constructor), null where missing. */
  setData(steps, columns) {
    let drawn = columns;
    if (this.#stacked) {
      const totals = [];
      let below = steps.map(() => 0);
      for (const col of columns) {
        below = below.map((b, i) => b + (col[i] ?? 0));
        totals.push(below);
      }
      drawn = totals.reverse();
    }
    this.#plot.setData([steps, ...drawn]);
    // What the browser test watches grow: the values plotted in the first series (train loss on the loss chart).
    this.#container.dataset.points = String(columns[0]?.filter((v) => v !== null && v !== undefined).length ?? 0);
  }

  destroy() {
    this.#resize.disconnect();
    this.#plot.destroy();
  }
}

function fmt(v) {
  if (v === null || v === undefined || !Number.isFinite(v)) return '–';
  return Math.abs(v) >= 100 ? v.toFixed(0) : v.toPrecision(4);
}
