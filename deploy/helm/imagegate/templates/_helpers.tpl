{{- /* Whether one replica (the Lease holder) writes violations to the
cluster: Events, policy reports, or both. */ -}}
{{- define "imagegate.reporting" -}}
{{- if or .Values.webhook.violationEvents (ne (include "imagegate.reportFormat" .) "off") }}true{{ end }}
{{- end }}

{{- /* The policy report format, checked here so a typo fails the install
rather than the webhook's start. YAML reads an unquoted `off` as false. */ -}}
{{- define "imagegate.reportFormat" -}}
{{- $format := .Values.webhook.reports.format }}
{{- if and (kindIs "bool" $format) (not $format) }}{{ $format = "off" }}{{ end }}
{{- $format = toString $format }}
{{- if not (has $format (list "openreports" "wgpolicyk8s" "off")) }}
{{- fail (printf "webhook.reports.format: openreports, wgpolicyk8s or off, not %q" $format) }}
{{- end }}
{{- $format }}
{{- end }}

{{- define "imagegate.labels" -}}
app.kubernetes.io/part-of: imagegate
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end -}}

{{- define "imagegate.webhookSelector" -}}
app.kubernetes.io/name: imagegate-webhook
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "imagegate.agentSelector" -}}
app.kubernetes.io/name: imagegate-agent
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* The certificate files both components read, at fixed paths, whatever their source. */}}
{{- define "imagegate.certVolume" -}}
- name: certs
  projected:
    sources:
{{- if eq .Values.certs.source "cert-manager" }}
      - secret:
          name: imagegate-webhook-tls
          items:
            - {key: tls.crt, path: webhook.crt}
            - {key: tls.key, path: webhook.key}
            - {key: ca.crt, path: ca.crt}
      - secret:
          name: imagegate-webhook-client-tls
          items:
            - {key: tls.crt, path: webhook-client.crt}
            - {key: tls.key, path: webhook-client.key}
      - secret:
          name: imagegate-agent-tls
          items:
            - {key: tls.crt, path: agent.crt}
            - {key: tls.key, path: agent.key}
{{- else }}
      - secret:
          name: {{ .Values.certs.secretName }}
{{- end }}
{{- end -}}

{{- define "imagegate.caBundle" -}}
{{- if eq .Values.certs.source "secret" }}
caBundle: {{ required "certs.caBundle: base64 of the CA from `imagegate-webhook certs` (or certs.source=cert-manager)" .Values.certs.caBundle }}
{{- end }}
{{- end -}}

{{- define "imagegate.caInjection" -}}
{{- if eq .Values.certs.source "cert-manager" }}
annotations:
  cert-manager.io/inject-ca-from: {{ .Release.Namespace }}/imagegate-webhook
{{- end }}
{{- end -}}

{{/* What the webhook configurations send: every kind the webhook checks. */}}
{{- define "imagegate.rules" -}}
- operations: [CREATE, UPDATE]
  apiGroups: [""]
  apiVersions: [v1]
  resources: [pods, pods/ephemeralcontainers, podtemplates, replicationcontrollers]
  scope: Namespaced
- operations: [CREATE, UPDATE]
  apiGroups: [apps]
  apiVersions: [v1]
  resources: [deployments, replicasets, daemonsets, statefulsets]
  scope: Namespaced
- operations: [CREATE, UPDATE]
  apiGroups: [batch]
  apiVersions: [v1]
  resources: [jobs, cronjobs]
  scope: Namespaced
{{- end -}}

{{/*
The namespaces imagegate never checks, derived here once: the release's own
namespace first, then exemptNamespaces. The webhook configurations leave them
out, the webhook exempts them (--exempt-namespace) and every agent exempts
their pods (--exempt-pod-namespace), so no half can flag what the other
leaves alone. A list, one name per line.
*/}}
{{- define "imagegate.exemptNamespaces" -}}
{{- $all := list .Release.Namespace -}}
{{- range .Values.exemptNamespaces -}}
{{- if not (has . $all) -}}{{- $all = append $all . -}}{{- end -}}
{{- end -}}
{{- join "\n" $all -}}
{{- end -}}

{{- define "imagegate.namespaceSelector" -}}
namespaceSelector:
  matchExpressions:
    - key: kubernetes.io/metadata.name
      operator: NotIn
      values:
{{- range splitList "\n" (include "imagegate.exemptNamespaces" .) }}
        - {{ . }}
{{- end }}
{{- end -}}

{{/*
The container runtime's socket folders the agent mounts (read-only), one
"name path type" a line. A socket named (agent.runtimeSocket, or the
earlier agent.containerdSocket): its folder, which must exist. A runtime
named: its default folder. auto: both runtimes' default folders, created
empty where absent, so one chart serves containerd and CRI-O nodes alike.
The folder, not the socket: a restarted runtime makes a new socket, which
a mount of the old one never shows.
*/}}
{{- define "imagegate.runtimeFolders" -}}
{{- $runtime := .Values.agent.runtime -}}
{{- if not (has $runtime (list "auto" "containerd" "cri-o")) -}}
{{- fail (printf "agent.runtime is %q: it must be auto, containerd or cri-o" $runtime) -}}
{{- end -}}
{{- $socket := .Values.agent.runtimeSocket | default .Values.agent.containerdSocket -}}
{{- if $socket -}}
runtime-socket {{ dir $socket }} Directory
{{- else if eq $runtime "containerd" -}}
containerd-socket /run/containerd Directory
{{- else if eq $runtime "cri-o" -}}
crio-socket /var/run/crio Directory
{{- else -}}
containerd-socket /run/containerd DirectoryOrCreate
crio-socket /var/run/crio DirectoryOrCreate
{{- end -}}
{{- end -}}
