// The strict sandbox: the app pixel runs in a web worker (no DOM, no window), as Shopify runs
// it. Loads the extension's src/index.js, calls its registered callback with the pixel API,
// then publishes the events the page sends.
import { registered } from "/harness/web-pixels-extension.js";
import { pixelApi } from "/harness/api.js";

let api = null;
self.onmessage = async (message) => {
  const data = message.data;
  if (data.type === "start") {
    api = pixelApi(data.config, (m) => self.postMessage(m));
    await import("/ext/src/index.js");
    const { analytics, browser, init, settings } = api;
    registered.callback({ analytics, browser, init, settings, customerPrivacy: init.customerPrivacy });
    self.postMessage({ type: "ready", hasWindow: typeof window !== "undefined" });
  } else if (data.type === "cookie") {
    api.setCookie(data.name, data.value);
  } else if (data.type === "publish") {
    api.publish(data.event);
  }
};
