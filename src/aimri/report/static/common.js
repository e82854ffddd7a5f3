/* Small DOM helpers shared by features.js and circuits.js (inlined before them). Text only ever
   reaches the page through textContent and setAttribute: never innerHTML. No network. */
var aimriDom = (function () {
  "use strict";
  // The SVG namespace, derived from the page's so that no file holds a URL at all.
  var SVGNS = document.documentElement.namespaceURI.replace("1999/xhtml", "2000/svg");
  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }
  function svg(tag, attrs, text) {
    var e = document.createElementNS(SVGNS, tag);
    Object.keys(attrs).forEach(function (k) { e.setAttribute(k, String(attrs[k])); });
    if (text !== undefined) e.textContent = String(text);
    return e;
  }
  function fmt(v, digits) {
    if (typeof v !== "number" || !isFinite(v)) return "–";
    var a = Math.abs(v);
    if (a !== 0 && (a >= 1e5 || a < 1e-3)) return v.toExponential(1);
    return String(Number(v.toPrecision(digits || 3)));
  }
  function showTok(t) { return String(t).replace(/\n/g, "↵").replace(/\t/g, "⇥"); }
  return { SVGNS: SVGNS, el: el, svg: svg, fmt: fmt, showTok: showTok };
})();
