// cartbridge custom pixel: paste into Shopify admin > Settings > Customer events > Add
// custom pixel, put your bridge's address in place of
// https://YOUR-CARTBRIDGE-HOST/pixel (last line), then Save and Connect.
// Generated from extensions/web-pixel/src/collector.js by snippet.py: edit that file instead.

// cartbridge browse collector: standard Web Pixels events -> POST {shop, cart_token, event}.
// Shared by the app pixel (src/index.js) and the custom pixel (custom-pixel.js, generated from
// this file by `make pixel-snippet`; keep it plain JavaScript with no imports).
//
// - fetch with keepalive and NO Content-Type: a CORS "simple" request, no preflight; the
//   deprecated browser.sendBeacon is not used.
// - Large arrays are trimmed and long strings cut so a body stays far below the 64 KiB
//   keepalive budget, measured in UTF-8 bytes (what goes on the wire and what the bridge
//   counts), not in JavaScript's UTF-16 string length: a title of 3-byte characters is three
//   times longer on the wire than its .length says.
// - Who the visitor is never leaves the browser: emails, phones, addresses and customer ids
//   are dropped from checkout data (the bridge ignores them anyway: docs/browse.md).
const CARTBRIDGE_EVENTS = [
  "product_viewed",
  "collection_viewed",
  "search_submitted",
  "product_added_to_cart",
  "cart_viewed",
  "checkout_started",
  "checkout_completed",
];
const CARTBRIDGE_LIMITS = { listed: 10, lines: 50, text: 1000, bodyBytes: 60000 };

// UTF-8 bytes of a string. TextEncoder exists in both sandboxes (worker and iframe); without
// it, 3 bytes per UTF-16 unit is an upper bound (a pair of units is 4 bytes), so the body
// still stays within budget.
function cartbridgeBytes(text) {
  if (typeof TextEncoder === "function") return new TextEncoder().encode(text).length;
  return text.length * 3;
}

// Strings in event data longer than `max` UTF-16 units: text (titles) is cut, never inside a
// surrogate pair; a URL is dropped (a cut URL would be another, broken, address).
function cartbridgeShorten(value, max, key) {
  if (typeof value === "string") {
    if (value.length <= max) return value;
    if (key === "url" || key === "src" || key === "href") return null;
    const code = value.charCodeAt(max - 1);
    return value.slice(0, code >= 0xd800 && code <= 0xdbff ? max - 1 : max);
  }
  if (Array.isArray(value)) return value.map((v) => cartbridgeShorten(v, max, key));
  if (value && typeof value === "object") {
    for (const k of Object.keys(value)) value[k] = cartbridgeShorten(value[k], max, k);
  }
  return value;
}

function cartbridgeCartToken(raw) {
  if (typeof raw !== "string" || !raw) return null;
  const token = raw.replace("gid://shopify/Cart/", "").split("?")[0];
  return token || null;
}

function cartbridgeFirst(list, n) {
  return Array.isArray(list) ? list.slice(0, n) : list;
}

function cartbridgeTrim(event, limits) {
  const data = event.data ? JSON.parse(JSON.stringify(event.data)) : event.data;
  if (data && data.collection) {
    data.collection.productVariants = cartbridgeFirst(data.collection.productVariants, limits.listed);
  }
  if (data && data.searchResult) {
    data.searchResult.productVariants = cartbridgeFirst(data.searchResult.productVariants, limits.listed);
  }
  if (data && data.cart) {
    data.cart.lines = cartbridgeFirst(data.cart.lines, limits.lines);
  }
  if (data && data.checkout) {
    const c = data.checkout;
    c.lineItems = cartbridgeFirst(c.lineItems, limits.lines);
    for (const key of ["email", "phone", "shippingAddress", "billingAddress", "transactions"]) {
      delete c[key];
    }
    if (c.order) delete c.order.customer;
  }
  cartbridgeShorten(data, limits.text || CARTBRIDGE_LIMITS.text, null);
  const document = event.context && event.context.document;
  return {
    id: event.id,
    name: event.name,
    clientId: event.clientId,
    timestamp: event.timestamp,
    seq: event.seq,
    type: event.type,
    context: document ? { document: { location: document.location, title: document.title } } : {},
    data: data === undefined ? null : data,
  };
}

function cartbridgeCollect(api, collectorUrl, limits) {
  const { analytics, browser, init } = api;
  limits = limits || CARTBRIDGE_LIMITS;
  const shop = init && init.data && init.data.shop ? init.data.shop.myshopifyDomain : null;
  let knownCart = cartbridgeCartToken(init && init.data && init.data.cart ? init.data.cart.id : null);
  if (!collectorUrl || !shop) return false;

  async function cartToken(event) {
    const fromEvent = event.data && event.data.cart ? cartbridgeCartToken(event.data.cart.id) : null;
    if (fromEvent) knownCart = fromEvent;
    if (!knownCart && event.name === "product_added_to_cart" && browser && browser.cookie) {
      // The first add creates the cart after the page rendered: init.data.cart was null.
      try {
        knownCart = cartbridgeCartToken(await browser.cookie.get("cart"));
      } catch (e) {
        knownCart = null;
      }
    }
    return knownCart;
  }

  async function send(event) {
    const trimmed = cartbridgeTrim(event, limits);
    let body = JSON.stringify({ shop: shop, cart_token: await cartToken(event), event: trimmed });
    if (cartbridgeBytes(body) > limits.bodyBytes) {
      trimmed.data = null; // still a browse signal; never a body the browser would refuse
      trimmed.context = {};
      body = JSON.stringify({ shop: shop, cart_token: knownCart, event: trimmed });
    }
    try {
      await fetch(collectorUrl, { method: "POST", keepalive: true, body: body });
    } catch (e) {
      // Nobody reads the answer; a lost browse event is not worth a retry.
    }
  }

  for (const name of CARTBRIDGE_EVENTS) {
    analytics.subscribe(name, (event) => {
      send(event);
    });
  }
  return true;
}

cartbridgeCollect({ analytics, browser, init }, "https://YOUR-CARTBRIDGE-HOST/pixel");
