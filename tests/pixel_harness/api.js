// The Web Pixels API as web-pixels.md sections 2 and 4 describe it, for one pixel: analytics
// (subscribe by event name or group), browser (async cookie and storage access), init.
// `post` reports to the page what the pixel sent (fetch is wrapped, then really called).
const STANDARD = new Set([
  "page_viewed", "product_viewed", "collection_viewed", "search_submitted",
  "product_added_to_cart", "product_removed_from_cart", "cart_viewed", "checkout_started",
  "checkout_completed",
]);

export function pixelApi(config, post) {
  const subscribers = new Map();
  const cookies = { ...(config.cookies || {}) };
  const store = new Map();
  const analytics = {
    subscribe(name, callback) {
      if (!subscribers.has(name)) subscribers.set(name, []);
      subscribers.get(name).push(callback);
    },
  };
  const browser = {
    cookie: {
      get: async (name) => (name in cookies ? cookies[name] : ""),
      set: async (name, value) => { cookies[name] = value; },
    },
    localStorage: {
      getItem: async (k) => (store.has(k) ? store.get(k) : null),
      setItem: async (k, v) => { store.set(k, String(v)); },
      removeItem: async (k) => { store.delete(k); },
    },
    sendBeacon: async () => { throw new Error("browser.sendBeacon is deprecated"); },
  };
  const realFetch = self.fetch.bind(self);
  self.fetch = async (url, options) => {
    options = options || {};
    const headers = new Headers(options.headers || {});
    post({
      type: "sent",
      url: String(url),
      method: options.method || "GET",
      keepalive: options.keepalive === true,
      contentType: headers.get("content-type"),
      body: typeof options.body === "string" ? options.body : null,
    });
    const response = await realFetch(url, options);
    post({ type: "answered", status: response.status });
    return response;
  };
  function publish(event) {
    const groups = STANDARD.has(event.name) ? ["all_events", "all_standard_events"] : ["all_events"];
    for (const name of [event.name, ...groups]) {
      for (const callback of subscribers.get(name) || []) callback(event);
    }
  }
  function setCookie(name, value) { cookies[name] = value; }
  return { analytics, browser, init: config.init, settings: config.settings, publish, setCookie };
}
