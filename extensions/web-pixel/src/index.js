// cartbridge's app pixel (strict sandbox): see ../shopify.extension.toml and docs/browse.md.
import { register } from "@shopify/web-pixels-extension";
import { cartbridgeCollect } from "./collector.js";

register(({ analytics, browser, init, settings }) => {
  cartbridgeCollect({ analytics, browser, init }, settings.collectorUrl);
});
