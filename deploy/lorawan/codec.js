// camtrap LoRaWAN payload codec v1 (ChirpStack v4 and The Things Stack v3 payload formatter).
//
// The twin of edge_app/core/lora_codec.py: same layouts, same rounding (floor(x * k + 0.5)), same
// error and warning strings. Both are checked against tests/lorawan_vectors.json and against
// each other on random bytes (tests/test_lorawan_codec.py runs this file under node).
// Plain ES5 on purpose: ChirpStack runs codecs in QuickJS, TTN in goja; neither needs more.
//
//   alert  fPort 10, 11 bytes: ver:3|label:2|species:3, conf %, time u32, seq16 u16, count,
//                              battery 0.1 V (0xFF unknown), flags (time_synced, backlog,
//                              mqtt_down)
//   status fPort 11, 11 bytes: ver:3|0:5, battery, temp i8 (-128 unknown), disk 0.1 GB u16,
//                              outbox depth u16, uptime minutes u24, flags (time_synced,
//                              mqtt_connected, disk_low, lora_backlog, 4..6 cellular state
//                              (0 none: no key), 7 cell_signal_low; once reserved bits, so
//                              older decoders warn and still decode)
//   command fPort 20 (downlink): 01 target pct | 02 | 03 hours | 04 mode

var VERSION = 1;
var PORT_ALERT = 10, PORT_STATUS = 11, PORT_COMMAND = 20;
var LABELS = ["empty", "animal", "person", "vehicle"];
var SPECIES = [null, "leopard", "tiger", "other_big_cat"];
var TARGETS = ["detector", "species"];
var MODES = ["fallback", "always"];
var COMMANDS = {1: "set_threshold", 2: "request_status", 3: "set_status_interval", 4: "set_mode"};
var COMMAND_NAMES = ["set_threshold", "request_status", "set_status_interval", "set_mode"];
var COMMAND_BYTES = {set_threshold: 3, request_status: 1, set_status_interval: 2, set_mode: 2};
var ALERT_FLAGS = ["time_synced", "backlog", "mqtt_down"];
var STATUS_FLAGS = ["time_synced", "mqtt_connected", "disk_low", "lora_backlog"];
var CELL_STATES = [null, "up", "idle", "connecting", "no_signal", "no_modem", "modem_error",
  "failing"];
var CELL_LOW = 0x80;
var ALERT_KEYS = ["type", "version", "label", "species", "confidence", "time", "ts", "seq16",
  "seq", "count", "battery_v"].concat(ALERT_FLAGS);
var STATUS_KEYS = ["type", "version", "battery_v", "temp_c", "disk_free_gb", "outbox_depth",
  "uptime_min"].concat(STATUS_FLAGS, ["cellular", "cell_signal_low"]);

function scale(x, k) { return Math.floor(x * k + 0.5); }

function hex2(n) { return (n < 16 ? "0" : "") + n.toString(16); }

function pad(n, w) { var s = String(n); while (s.length < w) { s = "0" + s; } return s; }

function isoUtc(t) {
  var d = new Date(t * 1000);
  return pad(d.getUTCFullYear(), 4) + "-" + pad(d.getUTCMonth() + 1, 2) + "-" +
    pad(d.getUTCDate(), 2) + "T" + pad(d.getUTCHours(), 2) + ":" + pad(d.getUTCMinutes(), 2) +
    ":" + pad(d.getUTCSeconds(), 2) + "Z";
}

function indexOf(list, value) {
  for (var i = 0; i < list.length; i++) { if (list[i] === value) { return i; } }
  return -1;
}

function isNum(v) { return typeof v === "number" && isFinite(v); }
function isInt(v) { return isNum(v) && Math.floor(v) === v; }

function toBytes(input) {
  var raw = input && input.bytes;
  if (raw === undefined || raw === null || typeof raw.length !== "number") { return null; }
  var out = [];
  for (var i = 0; i < raw.length; i++) {
    var v = raw[i];
    if (!isInt(v) || v < 0 || v > 255) { return null; }
    out.push(v);
  }
  return out;
}

function u(b, start, n) {
  var v = 0;
  for (var i = 0; i < n; i++) { v = v * 256 + b[start + i]; }
  return v;
}

function battery(b) { return b === 0xFF ? null : b / 10; }

function flags(byte, names, data, warnings) {
  for (var i = 0; i < names.length; i++) { data[names[i]] = ((byte >> i) & 1) === 1; }
  var reserved = byte & ~((1 << names.length) - 1) & 0xFF;
  if (reserved) { warnings.push("reserved flag bits set: 0x" + hex2(reserved)); }
}

function decodeAlert(b, res) {
  if (b.length !== 11) { res.errors.push("alert: expected 11 bytes, got " + b.length); return; }
  var label = LABELS[(b[0] >> 3) & 0x3];
  var code = b[0] & 0x7;
  var species = null;
  if (code < SPECIES.length) { species = SPECIES[code]; }
  else { res.warnings.push("unknown species code " + code); }
  if (b[1] > 100) {
    res.errors.push("alert: confidence " + b[1] + "% out of range (0..100)");
    return;
  }
  var t = u(b, 2, 4);
  var data = {
    type: "alert", version: VERSION, label: label, species: species, confidence: b[1] / 100,
    time: t, ts: isoUtc(t), seq16: u(b, 6, 2), count: b[8], battery_v: battery(b[9])
  };
  flags(b[10], ALERT_FLAGS, data, res.warnings);
  res.data = data;
}

function decodeStatus(b, res) {
  if (b.length !== 11) { res.errors.push("status: expected 11 bytes, got " + b.length); return; }
  if (b[0] & 0x1F) { res.warnings.push("reserved header bits set: 0x" + hex2(b[0] & 0x1F)); }
  var temp = b[2] > 127 ? b[2] - 256 : b[2];
  var data = {
    type: "status", version: VERSION, battery_v: battery(b[1]),
    temp_c: temp === -128 ? null : temp, disk_free_gb: u(b, 3, 2) / 10,
    outbox_depth: u(b, 5, 2), uptime_min: u(b, 7, 3)
  };
  flags(b[10] & 0x0F, STATUS_FLAGS, data, res.warnings);
  var cell = (b[10] >> 4) & 0x7;
  if (cell) {
    data.cellular = CELL_STATES[cell];
    data.cell_signal_low = (b[10] & CELL_LOW) !== 0;
  } else if (b[10] & CELL_LOW) {
    res.warnings.push("reserved flag bits set: 0x" + hex2(CELL_LOW));
  }
  res.data = data;
}

// ChirpStack v4 / TTN v3: input = {bytes: [...], fPort: n, recvTime, variables}
function decodeUplink(input) {
  var res = {data: {}, warnings: [], errors: []};
  var b = toBytes(input);
  if (b === null) { res.errors.push("bytes must be integers 0..255"); return res; }
  if (b.length === 0) { res.errors.push("empty payload"); return res; }
  var fPort = input.fPort;
  if (fPort !== PORT_ALERT && fPort !== PORT_STATUS) {
    res.errors.push("unknown fPort " + fPort);
    return res;
  }
  var version = b[0] >> 5;
  if (version !== VERSION) { res.errors.push("unknown payload version " + version); return res; }
  if (fPort === PORT_ALERT) { decodeAlert(b, res); } else { decodeStatus(b, res); }
  if (res.errors.length) { res.data = {}; }
  return res;
}

function decodeDownlink(input) {
  var res = {data: {}, warnings: [], errors: []};
  var b = toBytes(input);
  if (b === null) { res.errors.push("bytes must be integers 0..255"); return res; }
  if (input.fPort !== PORT_COMMAND) { res.errors.push("unknown fPort " + input.fPort); return res; }
  if (b.length === 0) { res.errors.push("command: empty"); return res; }
  var name = COMMANDS[b[0]];
  if (name === undefined) { res.errors.push("unknown command 0x" + hex2(b[0])); return res; }
  if (b.length !== COMMAND_BYTES[name]) {
    res.errors.push(name + ": expected " + COMMAND_BYTES[name] + " bytes, got " + b.length);
    return res;
  }
  var data = {command: name};
  if (name === "set_threshold") {
    if (b[1] >= TARGETS.length) { res.errors.push("set_threshold: unknown target " + b[1]); }
    else if (b[2] < 1 || b[2] > 99) {
      res.errors.push("set_threshold: threshold " + b[2] + "% out of range (1..99)");
    } else { data.target = TARGETS[b[1]]; data.threshold = b[2] / 100; }
  } else if (name === "set_status_interval") {
    data.hours = b[1];
  } else if (name === "set_mode") {
    if (b[1] >= MODES.length) { res.errors.push("set_mode: unknown mode " + b[1]); }
    else { data.mode = MODES[b[1]]; }
  }
  if (!res.errors.length) { res.data = data; }
  return res;
}

function encBattery(v, errors) {
  if (v === undefined || v === null) { return 0xFF; }
  if (!isNum(v) || v < 0 || v > 25.4) {
    errors.push("battery_v must be null or a number in [0, 25.4]");
    return 0;
  }
  return scale(v, 10);
}

function encFlags(d, names, errors) {
  var byte = 0;
  for (var i = 0; i < names.length; i++) {
    var v = d[names[i]];
    if (v === undefined) { v = false; }
    if (typeof v !== "boolean") { errors.push(names[i] + " must be true or false"); }
    else if (v) { byte |= 1 << i; }
  }
  return byte;
}

function unknownKeys(d, known, warnings) {
  var keys = [];
  for (var k in d) { if (Object.prototype.hasOwnProperty.call(d, k)) { keys.push(k); } }
  keys.sort();
  for (var i = 0; i < keys.length; i++) {
    if (indexOf(known, keys[i]) < 0) { warnings.push("unknown field " + keys[i] + " ignored"); }
  }
}

function has(d, k) { return Object.prototype.hasOwnProperty.call(d, k); }

function encCellular(d, errors) {
  var cell = d.cellular, low = d.cell_signal_low;
  if (low === undefined) { low = false; }
  if (typeof low !== "boolean") {
    errors.push("cell_signal_low must be true or false");
    low = false;
  }
  if (cell === undefined || cell === null) {
    if (low) { errors.push("cell_signal_low needs a cellular state"); }
    return 0;
  }
  var i = indexOf(CELL_STATES, cell);
  if (i < 1) {
    errors.push("cellular must be null or one of " + CELL_STATES.slice(1).join(", "));
    return 0;
  }
  return (i << 4) | (low ? CELL_LOW : 0);
}

function encodeAlert(d, res) {
  var e = res.errors;
  unknownKeys(d, ALERT_KEYS, res.warnings);
  var label = d.label;
  if (indexOf(LABELS, label) < 0) {
    e.push("label must be one of empty, animal, person, vehicle");
    label = "empty";
  }
  var species = has(d, "species") ? d.species : null;
  if (indexOf(SPECIES, species) < 0) {
    e.push("species must be null or one of leopard, tiger, other_big_cat");
    species = null;
  }
  var conf = d.confidence;
  if (!isNum(conf) || conf < 0 || conf > 1) { e.push("confidence must be a number in [0, 1]"); conf = 0; }
  var t = d.time;
  if (!isInt(t) || t < 0 || t > 4294967295) {
    e.push("time must be an integer in [0, 4294967295]");
    t = 0;
  }
  var seq = has(d, "seq16") ? d.seq16 : d.seq;
  if (!isInt(seq) || seq < 0 || (has(d, "seq16") && seq > 65535)) {
    e.push("seq16 must be an integer in [0, 65535] (or seq, any integer ≥ 0)");
    seq = 0;
  }
  seq = seq % 65536;
  var count = has(d, "count") ? d.count : 1;
  if (!isInt(count) || count < 0) { e.push("count must be an integer ≥ 0"); count = 0; }
  var batt = encBattery(d.battery_v, e);
  var fl = encFlags(d, ALERT_FLAGS, e);
  res.bytes = [(VERSION << 5) | (indexOf(LABELS, label) << 3) | indexOf(SPECIES, species),
    scale(conf, 100), Math.floor(t / 16777216) % 256, Math.floor(t / 65536) % 256,
    Math.floor(t / 256) % 256, t % 256, Math.floor(seq / 256), seq % 256,
    Math.min(count, 255), batt, fl];
}

function encodeStatus(d, res) {
  var e = res.errors;
  unknownKeys(d, STATUS_KEYS, res.warnings);
  var batt = encBattery(d.battery_v, e);
  var temp = d.temp_c, tempB;
  if (temp === undefined || temp === null) { tempB = -128; }
  else if (!isNum(temp) || temp < -127 || temp > 127) {
    e.push("temp_c must be null or a number in [-127, 127]");
    tempB = 0;
  } else { tempB = scale(temp, 1); }
  var disk = has(d, "disk_free_gb") ? d.disk_free_gb : 0;
  if (!isNum(disk) || disk < 0) { e.push("disk_free_gb must be a number ≥ 0"); disk = 0; }
  var depth = has(d, "outbox_depth") ? d.outbox_depth : 0;
  if (!isInt(depth) || depth < 0) { e.push("outbox_depth must be an integer ≥ 0"); depth = 0; }
  var up = has(d, "uptime_min") ? d.uptime_min : 0;
  if (!isInt(up) || up < 0) { e.push("uptime_min must be an integer ≥ 0"); up = 0; }
  var fl = encFlags(d, STATUS_FLAGS, e) | encCellular(d, e);
  var diskU = Math.min(scale(disk, 10), 65535);
  depth = Math.min(depth, 65535);
  up = Math.min(up, 16777215);
  res.bytes = [VERSION << 5, batt, tempB & 0xFF, Math.floor(diskU / 256), diskU % 256,
    Math.floor(depth / 256), depth % 256, Math.floor(up / 65536), Math.floor(up / 256) % 256,
    up % 256, fl];
}

// Not a network-server hook: the encoder the trap uses, for `camtrap lorawan encode` parity.
function encodeUplink(input) {
  var res = {bytes: [], fPort: input.fPort, warnings: [], errors: []};
  var d = input.data;
  if (d === null || typeof d !== "object" || d instanceof Array) {
    res.errors.push("data must be an object");
    return res;
  }
  if (input.fPort === PORT_ALERT) { encodeAlert(d, res); }
  else if (input.fPort === PORT_STATUS) { encodeStatus(d, res); }
  else { res.errors.push("unknown fPort " + input.fPort); }
  if (res.errors.length) { res.bytes = []; }
  return res;
}

// ChirpStack v4 / TTN v3: input = {data: {...}, variables} -> {bytes, fPort, warnings, errors}
function encodeDownlink(input) {
  var res = {bytes: [], fPort: PORT_COMMAND, warnings: [], errors: []};
  var d = input.data;
  if (d === null || typeof d !== "object" || d instanceof Array) {
    res.errors.push("data must be an object");
    return res;
  }
  var name = d.command;
  if (name === "set_threshold") {
    var target = has(d, "target") ? d.target : "detector";
    var thr = d.threshold;
    if (indexOf(TARGETS, target) < 0) { res.errors.push("target must be one of detector, species"); }
    if (!isNum(thr) || thr < 0.01 || thr > 0.99) {
      res.errors.push("threshold must be a number in [0.01, 0.99]");
    }
    if (!res.errors.length) { res.bytes = [1, indexOf(TARGETS, target), scale(thr, 100)]; }
  } else if (name === "request_status") {
    res.bytes = [2];
  } else if (name === "set_status_interval") {
    if (!isInt(d.hours) || d.hours < 0 || d.hours > 255) {
      res.errors.push("hours must be an integer in [0, 255]");
    } else { res.bytes = [3, d.hours]; }
  } else if (name === "set_mode") {
    if (indexOf(MODES, d.mode) < 0) { res.errors.push("mode must be one of fallback, always"); }
    else { res.bytes = [4, indexOf(MODES, d.mode)]; }
  } else {
    res.errors.push("command must be one of " + COMMAND_NAMES.join(", "));
  }
  if (res.errors.length) { res.bytes = []; }
  return res;
}

if (typeof module !== "undefined" && module.exports) {
  module.exports = {
    decodeUplink: decodeUplink, decodeDownlink: decodeDownlink,
    encodeDownlink: encodeDownlink, encodeUplink: encodeUplink
  };
}
