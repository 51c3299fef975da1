-- wrk script: one request per seeded order, in turn, wrapping around after the last.
--
--   wrk ... -s bench/lua/orders.lua URL -- METHOD PATH_FORMAT PREFIX COUNT DELAY_MS
--
-- PATH_FORMAT has one %s for the order id ("/v1/order-status/%s", "/v1/orders/%s/payment"); ids
-- are PREFIX followed by a six-digit number from 1 to COUNT (bench/seed.py makes them). DELAY_MS
-- above 0 paces each connection: it waits that long after every response, so the load is a steady
-- rate (connections * 1000 / DELAY_MS per second at most) instead of as fast as the server answers.
-- POSTs carry a CSRF cookie and the same token in X-CSRFToken, as the order page's form would.

local method, path_format, prefix, count, delay_ms
local counter = 0
-- Django accepts a 32-character secret of letters and digits as cookie and header token.
local csrf_token = "benchCsrfToken0123456789abcdefgh"

function init(args)
  method, path_format, prefix = args[1], args[2], args[3]
  count, delay_ms = tonumber(args[4]), tonumber(args[5])
  if method == "POST" then
    wrk.headers["Cookie"] = "csrftoken=" .. csrf_token
    wrk.headers["X-CSRFToken"] = csrf_token
  end
  if delay_ms > 0 then
    delay = function() return delay_ms end
  end
end

function request()
  counter = counter + 1
  local id = string.format("%s%06d", prefix, (counter - 1) % count + 1)
  return wrk.format(method, string.format(path_format, id), nil, method == "POST" and "" or nil)
end
