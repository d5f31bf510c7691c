// parkpay's pages in two languages: English (the text in the markup and the scripts) and
// Simplified Chinese. Each page adds its own dictionary ({"English text": "中文"}) with
// I18N.add(...) and marks translatable markup with data-i18n (text) or data-i18n-attr
// ("placeholder,aria-label,title"). The choice is kept in localStorage ("parkpay.lang"); without
// one, a browser whose first language is Chinese gets zh-CN.
(function () {
  "use strict";
  var KEY = "parkpay.lang";
  var dict = {};

  function chosen() {
    var saved = null;
    try { saved = window.localStorage.getItem(KEY); } catch (e) { saved = null; }
    if (saved === "zh-CN" || saved === "en") return saved;
    var langs = navigator.languages && navigator.languages.length ? navigator.languages : [navigator.language || "en"];
    return String(langs[0] || "en").toLowerCase().indexOf("zh") === 0 ? "zh-CN" : "en";
  }

  var lang = chosen();

  // The translation of `text` (or `text` itself), with {name} replaced from `vars`.
  function t(text, vars) {
    var s = lang === "zh-CN" && Object.prototype.hasOwnProperty.call(dict, text) ? dict[text] : text;
    if (vars) {
      s = s.replace(/\{(\w+)\}/g, function (m, k) {
        return Object.prototype.hasOwnProperty.call(vars, k) ? String(vars[k]) : m;
      });
    }
    return s;
  }

  // Translates marked elements under `root` (the document by default). The English original is
  // kept on the element, so applying twice, or after a language switch, is safe.
  function apply(root) {
    root = root || document;
    var els = root.querySelectorAll("[data-i18n]");
    for (var i = 0; i < els.length; i++) {
      var el = els[i];
      if (!el.hasAttribute("data-i18n-en")) el.setAttribute("data-i18n-en", el.textContent.trim());
      el.textContent = t(el.getAttribute("data-i18n-en"));
    }
    var withAttrs = root.querySelectorAll("[data-i18n-attr]");
    for (var j = 0; j < withAttrs.length; j++) {
      var e = withAttrs[j];
      var names = e.getAttribute("data-i18n-attr").split(",");
      for (var k = 0; k < names.length; k++) {
        var name = names[k].trim();
        if (!name) continue;
        var keep = "data-i18n-en-" + name;
        if (!e.hasAttribute(keep) && e.hasAttribute(name)) e.setAttribute(keep, e.getAttribute(name));
        if (e.hasAttribute(keep)) e.setAttribute(name, t(e.getAttribute(keep)));
      }
    }
    document.documentElement.lang = lang;
    var toggles = document.querySelectorAll("[data-i18n-toggle]");
    for (var n = 0; n < toggles.length; n++) {
      // The switch names the other language in that language, so a reader of it finds it.
      toggles[n].textContent = lang === "zh-CN" ? "English" : "中文";
      toggles[n].setAttribute("lang", lang === "zh-CN" ? "en" : "zh-CN");
    }
  }

  function set(next) {
    if (next !== "zh-CN" && next !== "en") return;
    try { window.localStorage.setItem(KEY, next); } catch (e) { /* private mode: this page only */ }
    lang = next;
    apply(document);
    document.dispatchEvent(new CustomEvent("parkpay:lang", { detail: { lang: lang } }));
  }

  // A number of fen as money in the page's language: "¥12.50".
  function money(fen) {
    var neg = fen < 0;
    var v = Math.abs(Math.round(Number(fen) || 0));
    return (neg ? "-" : "") + "¥" + Math.floor(v / 100) + "." + String(v % 100).padStart(2, "0");
  }

  // An instant shown in the time zone `tz` (the lot's), in the page's language.
  function dateTime(iso, tz, opts) {
    if (!iso) return "";
    var d = new Date(iso);
    if (isNaN(d.getTime())) return String(iso);
    var o = opts || { year: "numeric", month: "2-digit", day: "2-digit", hour: "2-digit", minute: "2-digit", hour12: false };
    if (tz) o = Object.assign({ timeZone: tz }, o);
    try {
      return new Intl.DateTimeFormat(lang === "zh-CN" ? "zh-CN" : "en-GB", o).format(d);
    } catch (e) {
      return d.toISOString();
    }
  }

  document.addEventListener("click", function (ev) {
    var el = ev.target && ev.target.closest ? ev.target.closest("[data-i18n-toggle]") : null;
    if (!el) return;
    ev.preventDefault();
    set(lang === "zh-CN" ? "en" : "zh-CN");
  });

  document.documentElement.lang = lang;

  window.I18N = {
    get lang() { return lang; },
    add: function (d) { for (var k in d) if (Object.prototype.hasOwnProperty.call(d, k)) dict[k] = d[k]; },
    t: t,
    apply: apply,
    set: set,
    money: money,
    dateTime: dateTime,
  };
})();
