// Command controller is Knative Eventing's controller reduced to its ApiServerSource reconciler,
// at the eventing release the adapter is built from (this module's go.mod), for the test suite:
// it reads the shipped ApiServerSource, checks its identity's rights, resolves its sink and
// writes the adapter Deployment and the source's status, as the stock controller does.
//
// What differs from eventing's cmd/controller/main.go, only so that it runs as a plain process
// beside other test processes: no other reconciler (their CRDs and informers would be needed),
// no health probe server (the stock one binds :8080 on every interface), and only the
// filtered-informer selectors this reconciler reads (auth.OIDCLabelSelector and
// eventingtls.TrustBundleLabelSelector; without them the informers panic "Unable to fetch
// labelkey"). The process is started with --disable-ha and PROFILING_PORT=0 (tests/eventing_controller.py).
package main

import (
	kubefilteredfactory "knative.dev/pkg/client/injection/kube/informers/factory/filtered"
	"knative.dev/pkg/injection/sharedmain"
	"knative.dev/pkg/signals"

	"knative.dev/eventing/pkg/auth"
	"knative.dev/eventing/pkg/eventingtls"
	"knative.dev/eventing/pkg/reconciler/apiserversource"
)

func main() {
	ctx := signals.NewContext()
	ctx = kubefilteredfactory.WithSelectors(ctx,
		auth.OIDCLabelSelector,
		eventingtls.TrustBundleLabelSelector,
	)
	ctx = sharedmain.WithHealthProbesDisabled(ctx)
	sharedmain.MainWithContext(ctx, "controller", apiserversource.NewController)
}
