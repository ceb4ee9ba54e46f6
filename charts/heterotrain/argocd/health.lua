-- Argo CD health check of heterotrain.io/HeteroTrainJob (Argo CD ships none for it).
-- Install: argocd-cm key resource.customizations.health.heterotrain.io_HeteroTrainJob (the chart's README).
--
-- It follows kstatus (sigs.k8s.io/cli-utils/pkg/kstatus, what Flux and helm --wait read) rule for rule,
-- so the tools agree on every job:
--   observedGeneration behind generation    -> Progressing  (kstatus InProgress)
--   first of Reconciling/Stalled that is True -> Progressing / Degraded (InProgress / Failed)
--   Ready present and not True               -> Progressing  (InProgress)
--   otherwise                                -> Healthy, or Suspended when the Suspended condition holds
--                                               (kstatus Current)
-- The message is the deciding condition's "reason: message".
local hs = {}

local function describe(c, fallback)
  if c == nil then
    return fallback
  end
  if c.message ~= nil and c.message ~= "" then
    return tostring(c.reason) .. ": " .. c.message
  end
  return tostring(c.reason or c.type)
end

if obj.status == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to see the job"
  return hs
end

local st = obj.status
local generation = obj.metadata.generation
if st.observedGeneration ~= nil and generation ~= nil and st.observedGeneration ~= generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. tostring(generation)
  return hs
end

local by_type = {}
for _, c in ipairs(st.conditions or {}) do
  if by_type[c.type] == nil then
    by_type[c.type] = c
  end
  if c.status == "True" and c.type == "Reconciling" then
    hs.status = "Progressing"
    hs.message = describe(c)
    return hs
  end
  if c.status == "True" and c.type == "Stalled" then
    hs.status = "Degraded"
    hs.message = describe(c)
    return hs
  end
end

local ready = by_type["Ready"]
if ready ~= nil and ready.status ~= "True" then
  hs.status = "Progressing"
  hs.message = describe(ready)
  return hs
end

local suspended = by_type["Suspended"]
if suspended ~= nil and suspended.status == "True" then
  hs.status = "Suspended"
  hs.message = describe(suspended)
  return hs
end

hs.status = "Healthy"
local succeeded = by_type["Succeeded"]
if succeeded ~= nil and succeeded.status == "True" then
  hs.message = describe(succeeded)
else
  hs.message = describe(ready, "Phase " .. tostring(st.phase))
end
return hs
